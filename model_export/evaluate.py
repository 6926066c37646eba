"""Evaluate a model on a dataset split exactly as the service would run it.

Every image goes through the service's own preprocessing (``service.imaging.prepare``: stretch
to the model's input size, normalise) and every predicted mask through its own resize back
(``service.masks.resize_labels``), so the scores describe what clients get. With ``max_side``
each image is run as the service's ``native`` policy runs it instead (``native_labels``).
The model is anything that maps an (N, 3, H, W) batch to uint8 (N, H, W) labels: a PyTorch
module, or an ONNX file with its card run by the service's own runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from tqdm import tqdm

from model_export.architectures.layers import at_input_size
from model_export.datasets import SegmentationDataset
from model_export.metrics import ConfusionMatrix, Scores
from service.imaging import prepare
from service.masks import resize_labels
from service.model_card import InputSpec, ModelCard
from service.runtime import Runner

Predict = Callable[[np.ndarray], np.ndarray]  # (N, 3, H, W) -> (N, H, W) uint8
STRIDE = 32  # every architecture's total stride (architectures.TOTAL_STRIDE)


def torch_predictor(model: torch.nn.Module, device: torch.device | str = "cpu") -> Predict:
    model = model.eval()

    @torch.inference_mode()
    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device, torch.float32)
        logits = at_input_size(model(x), x.shape[-2:])
        return logits.argmax(1).to(torch.uint8).cpu().numpy()

    return predict


def onnx_session(path: Path | str, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(session: ort.InferenceSession) -> Predict:
    """Runs the session as the service does, by the file's card (``service.runtime.Runner``):
    the output the card serves, scaled to the input's size, as uint8 labels."""
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    runner = Runner(session, card, io_binding=False)

    def predict(batch: np.ndarray) -> np.ndarray:
        return runner.run(np.ascontiguousarray(batch, card.input.dtype))

    return predict


def evaluate(
    predict: Predict,
    dataset: SegmentationDataset,
    spec: InputSpec,
    *,
    batch_size: int = 16,
    progress: bool = False,
    max_side: int | None = None,
) -> Scores:
    """Scores of ``predict`` on ``dataset``: stretched to ``spec``'s size, or, with ``max_side``,
    one image at a time at its own size (long side at most ``max_side``)."""
    confusion = ConfusionMatrix(dataset.classes)
    if max_side is not None:
        for i in tqdm(range(len(dataset)), desc=dataset.name, disable=not progress, leave=False):
            image, truth = dataset[i]
            confusion.update(native_labels(predict, image, spec, max_side), truth)
        return confusion.scores()
    for images, masks in tqdm(
        _batches(dataset, batch_size),
        total=-(-len(dataset) // batch_size),
        desc=f"evaluate {dataset.name}",
        disable=not progress,
        leave=False,
    ):
        batch = np.stack([prepare(Image.fromarray(image), spec) for image in images])
        for labels, truth in zip(predict(batch), masks, strict=True):
            confusion.update(resize_labels(labels, (truth.shape[1], truth.shape[0])), truth)
    return confusion.scores()


def native_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(W, H) the ``native`` policy runs an image at: scaled so that its long side is at most
    ``max_side``, never up, aspect ratio kept (each side at least 1)."""
    factor = min(1.0, max_side / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def native_input(image: np.ndarray, spec: InputSpec, max_side: int) -> tuple[np.ndarray, int, int]:
    """((3, H', W') float input, h, w): the image at its native size (h, w), normalised and
    padded right and bottom to a multiple of ``STRIDE`` as the service does (its last column and
    row repeated)."""
    w, h = native_size(image.shape[1], image.shape[0], max_side)
    shape = (-(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE)
    x = prepare(
        Image.fromarray(image),
        spec.model_copy(update={"height": h, "width": w}),
        shape=shape,
        edge=True,
    )
    return x, h, w


def native_labels(
    predict: Predict, image: np.ndarray, spec: InputSpec, max_side: int
) -> np.ndarray:
    """(H, W) uint8 labels for ``image`` under the ``native`` policy: run padded at the native
    size, cropped, argmax, nearest-resized back to the image's size."""
    x, h, w = native_input(image, spec, max_side)
    labels = predict(x[None])[0, :h, :w]
    return resize_labels(np.ascontiguousarray(labels), (image.shape[1], image.shape[0]))


def _batches(
    dataset: SegmentationDataset, size: int
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    for start in range(0, len(dataset), size):
        samples = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
        yield [s[0] for s in samples], [s[1] for s in samples]
