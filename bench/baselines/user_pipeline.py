"""The per-image work of the framework baselines (LitServe, BentoML, Ray Serve), written once.

What a user of any of those frameworks would write with Pillow and NumPy, not segserve's code;
one copy, so the frameworks are compared doing the same work per image. It imports only what
every baseline venv has (NumPy, Pillow, onnxruntime, and pydantic for the model card).
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
from PIL import Image

from service.model_card import ModelCard


class UserPipeline:
    """One model on ONNX Runtime's CPU provider, with the steps around its batched ``infer``."""

    def __init__(self, model_path: str) -> None:
        self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        spec = self.card.input
        self.size = (spec.width, spec.height)
        self.mean = np.array(spec.mean, np.float32).reshape(3, 1, 1)
        self.std = np.array(spec.std, np.float32).reshape(3, 1, 1)
        self.palette = [c for rgb in self.card.palette() for c in rgb]

    def prepare(self, image: Image.Image) -> tuple[tuple[int, int], np.ndarray]:
        """The image's (W, H) and its normalised (3, h, w) model input."""
        size = image.size
        image.draft("RGB", self.size)  # JPEG: decode at a reduced scale, as segserve does
        x = np.asarray(image.convert("RGB").resize(self.size), np.float32).transpose(2, 0, 1)
        return size, (x / 255.0 - self.mean) / self.std

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, h, w) inputs -> (n, h, w) uint8 labels."""
        out = self.session.run(None, {self.session.get_inputs()[0].name: batch})[0]
        labels = out if self.card.output.kind == "labels" else out.argmax(axis=1)
        return labels.astype(np.uint8)

    def png(self, labels: np.ndarray, size: tuple[int, int]) -> bytes:
        """The palette PNG of (h, w) ``labels`` at the image's ``size``."""
        mask = Image.fromarray(labels, "P").resize(size, Image.NEAREST)
        mask.putpalette(self.palette)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
