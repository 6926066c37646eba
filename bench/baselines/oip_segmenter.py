"""What the Open Inference Protocol peers (KServe, MLServer) run per request: the code a user
writes for a custom model in those servers. Decode with Pillow, resize to the card's input
size, normalise, one ``session.run`` for the request's images, argmax, palette PNG at each
image's size. ORT's default threads; no dynamic batching (neither server batches by default).

Imports only numpy, onnxruntime, Pillow and segserve's model card reader: it runs in the peers'
own venvs (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
from PIL import Image

from service.model_card import ModelCard


class Segmenter:
    def __init__(self, model_path: str) -> None:
        self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.card = ModelCard.from_metadata(meta)
        spec = self.card.input
        self.size = (spec.width, spec.height)
        self.mean = np.array(spec.mean, np.float32).reshape(3, 1, 1)
        self.std = np.array(spec.std, np.float32).reshape(3, 1, 1)
        self.palette = [c for rgb in self.card.palette() for c in rgb]
        self.input_name = self.session.get_inputs()[0].name

    def pngs(self, images: list[bytes]) -> list[bytes]:
        """The palette PNG mask of each encoded image, at its own size."""
        decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        x = np.stack(
            [
                np.asarray(im.resize(self.size), np.float32).transpose(2, 0, 1) / 255.0
                for im in decoded
            ]
        )
        (out,) = self.session.run(None, {self.input_name: (x - self.mean) / self.std})
        labels = out if self.card.output.kind == "labels" else out.argmax(axis=1)
        return [self._png(lab, im.size) for lab, im in zip(labels, decoded, strict=True)]

    def _png(self, labels: np.ndarray, size: tuple[int, int]) -> bytes:
        mask = Image.fromarray(labels.astype(np.uint8), "P").resize(size, Image.NEAREST)
        mask.putpalette(self.palette)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        return buffer.getvalue()
