"""Joint image/mask augmentation for training: random scale, crop and horizontal flip.

Images resample bilinearly, masks with nearest neighbour (a class id is never interpolated);
pixels added by padding are marked ``IGNORE_INDEX`` so they never count in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_export.datasets import IGNORE_INDEX, Sample


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> Sample:
    """Resize to ``size`` = (W, H): bilinear for the image, nearest for the mask."""
    if (image.shape[1], image.shape[0]) == size:
        return image, mask
    img = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    lab = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(lab)


@dataclass(frozen=True)
class Augment:
    """Scale the pair by a random factor, then crop (padding first if needed) a random
    ``crop`` × ``crop`` window, then flip horizontally with probability ``flip``."""

    crop: int
    scale: tuple[float, float] = (0.75, 1.25)
    flip: float = 0.5

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Sample:
        h, w = mask.shape
        factor = rng.uniform(*self.scale)
        image, mask = resize_pair(image, mask, (round(w * factor), round(h * factor)))
        image, mask = self._pad_to_crop(image, mask)
        h, w = mask.shape
        top = int(rng.integers(0, h - self.crop + 1))
        left = int(rng.integers(0, w - self.crop + 1))
        window = np.s_[top : top + self.crop, left : left + self.crop]
        image, mask = image[window], mask[window]
        if rng.random() < self.flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def _pad_to_crop(self, image: np.ndarray, mask: np.ndarray) -> Sample:
        h, w = mask.shape
        pad_h, pad_w = max(self.crop - h, 0), max(self.crop - w, 0)
        if not (pad_h or pad_w):
            return image, mask
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
        return image, mask
