"""Hugging Face transformers' ``SegformerForSemanticSegmentation``, exported as its raw logits.

    built = build("nvidia/segformer-b0-finetuned-ade-512-512", download=True)
    built = build("path/to/dir")          # config.json + weights, as save_pretrained writes them

The source is a local directory (``save_pretrained``'s, or a Hub snapshot) or, with
``download``, a Hub id. The logits come out at 1/4 of the input's size, as the library gives
them; the service scales them up (bilinear, half-pixel centres: ``F.interpolate(...,
align_corners=False)``, as ``post_process_semantic_segmentation`` does) before the argmax.
Normalisation comes from the source's ``preprocessor_config.json`` (ImageNet's without one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from model_export.checkpoint import sha256
from model_export.export import Graph
from model_export.importers.publish import Built
from model_export.importers.torchvision_ops import declare_missing_ops
from model_export.importers.weights import RANDOM_INIT_SEED, DownloadError, Weights
from service.model_card import IMAGENET_MEAN, IMAGENET_STD

declare_missing_ops()  # before the library's first import (torchvision_ops says why)
from huggingface_hub.utils import logging as hub_logging  # noqa: E402
from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402
from transformers.utils import (  # noqa: E402
    IMAGE_PROCESSOR_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    cached_file,
)

INPUT_NAME = "pixel_values"  # the library's name for it
STRIDE = 32  # four overlapping patch embeddings: 4 x 2 x 2 x 2
Triple = tuple[float, float, float]


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build(source: str, *, download: bool = False, random_init: bool = False) -> Built:
    """The SegFormer in ``source``; ``random_init``: its config only, randomly initialised.
    ValueError for a source that is not a directory without ``download``, or that is not a
    SegFormer; DownloadError when the download fails."""
    local = Path(source).is_dir()
    if not local and (random_init or not download):
        raise ValueError(
            f"{source} is not a directory; with --pretrained it is downloaded from the "
            "Hugging Face Hub (--random-init needs a directory holding config.json)"
        )
    model, mean, std, file = _open(source, random_init, local)
    config = model.config
    provenance: dict[str, object] = {
        "imported_from": "transformers SegformerForSemanticSegmentation",
        "source": source,
    }
    if file is not None:
        provenance |= {"weights": file.name, "checkpoint_sha256": sha256(file)}
    weights = Weights(path=Path(source)) if local else Weights(pretrained=True)
    return Built(
        module=_Logits(model).eval(),
        num_classes=config.num_labels,
        architecture="segformer",
        backbone=f"MiT, hidden sizes {config.hidden_sizes}, depths {config.depths}",
        weights=Weights() if random_init else weights,
        graph=Graph(input_name=INPUT_NAME, full_size=False),
        stride=STRIDE,
        mean=mean,
        std=std,
        libraries=("transformers", "huggingface_hub", "safetensors"),
        provenance=provenance,
    )


def _open(
    source: str, random_init: bool, local: bool
) -> tuple[SegformerForSemanticSegmentation, Triple, Triple, Path | None]:
    """(model, mean, std, the weights file read) from ``source``. ValueError for a directory
    without what it takes, DownloadError when the Hub cannot be reached."""
    # A failed download logs each of its five retries, twice; the error below says it once.
    hub_logging.set_verbosity_error()
    try:
        return _read(source, random_init)
    except OSError as exc:  # transformers reports missing files and failed downloads so
        reason = str(exc).splitlines()[0]
        if local:
            raise ValueError(f"{source}: {reason}") from exc
        raise DownloadError(
            f"cannot download {source} from the Hugging Face Hub ({reason}): on a machine "
            f"with internet run `hf download {source} --local-dir DIR`, copy DIR here and "
            f"import DIR instead of {source}"
        ) from exc


def _read(
    source: str, random_init: bool
) -> tuple[SegformerForSemanticSegmentation, Triple, Triple, Path | None]:
    if random_init:
        torch.manual_seed(RANDOM_INIT_SEED)
        model = SegformerForSemanticSegmentation(SegformerConfig.from_pretrained(source))
        file = None
    else:
        model = SegformerForSemanticSegmentation.from_pretrained(source)
        file = _weights_file(source)
    mean, std = _normalisation(source)
    return model, mean, std, file


def _normalisation(source: str) -> tuple[Triple, Triple]:
    path = cached_file(source, IMAGE_PROCESSOR_NAME, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return IMAGENET_MEAN, IMAGENET_STD
    processor = json.loads(Path(path).read_text())
    mean = processor.get("image_mean", IMAGENET_MEAN)
    std = processor.get("image_std", IMAGENET_STD)
    return tuple(mean), tuple(std)  # type: ignore[return-value]


def _weights_file(source: str) -> Path | None:
    """The weights file ``from_pretrained`` read: in the directory, or in the Hub's cache."""
    for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            return Path(path)
    return None
