"""Segmentation quality from a confusion matrix: per-class IoU, mean IoU, pixel accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_export.datasets import IGNORE_INDEX


@dataclass(frozen=True)
class Scores:
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float]  # classes absent from both prediction and truth are left out

    def table(self) -> str:
        rows = [f"  {label:<14} {iou:6.4f}" for label, iou in self.per_class_iou.items()]
        return "\n".join(
            [f"mIoU {self.miou:.4f}   pixel accuracy {self.pixel_accuracy:.4f}", *rows]
        )


class ConfusionMatrix:
    """``counts[t, p]`` = pixels of true class t predicted as p; ``IGNORE_INDEX`` pixels skipped."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        n = len(self.classes)
        self.counts = np.zeros((n, n), dtype=np.int64)

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        if predicted.shape != truth.shape:
            raise ValueError(f"prediction {predicted.shape} and truth {truth.shape} differ")
        n = len(self.classes)
        keep = truth != IGNORE_INDEX
        t = truth[keep].astype(np.int64)
        p = predicted[keep].astype(np.int64)
        if t.size and (t.max() >= n or p.max() >= n):
            raise ValueError(f"class id out of range for {n} classes")
        self.counts += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def scores(self) -> Scores:
        tp = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - tp
        present = union > 0
        iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
        total = self.counts.sum()
        return Scores(
            miou=float(iou[present].mean()) if present.any() else 0.0,
            pixel_accuracy=float(tp.sum() / total) if total else 0.0,
            per_class_iou={
                c: float(v) for c, v, ok in zip(self.classes, iou, present, strict=True) if ok
            },
        )


# Radius bands (pixels, at the image's own size) for per-object recall: [low, high).
SIZE_BANDS_PX = ((0.0, 10.0), (10.0, 40.0), (40.0, 80.0), (80.0, float("inf")))


def band_name(band: tuple[float, float]) -> str:
    low, high = band
    if low == 0:
        return f"<{high:g}"
    return f">{low:g}" if high == float("inf") else f"{low:g}-{high:g}"


class ObjectRecall:
    """Per-object recall by radius band: an object counts as found when at least half of its
    visible pixels are predicted as its class. Objects with no visible pixel are not counted."""

    def __init__(self, bands: tuple[tuple[float, float], ...] = SIZE_BANDS_PX) -> None:
        self.bands = bands
        self.found = np.zeros(len(bands), np.int64)
        self.total = np.zeros(len(bands), np.int64)

    def update(
        self,
        predicted: np.ndarray,
        instances: np.ndarray,
        classes: np.ndarray,
        radii_px: np.ndarray,
    ) -> None:
        """``instances``: (H, W) object numbers, 0 = none; object k has class ``classes[k - 1]``
        and radius ``radii_px[k - 1]``."""
        ids = instances.ravel().astype(np.int64)
        n = len(classes)
        class_of = np.concatenate([[-1], np.asarray(classes, np.int64)])
        hits = predicted.ravel().astype(np.int64) == class_of[ids]
        pixels = np.bincount(ids, minlength=n + 1)[1:]
        correct = np.bincount(ids, weights=hits, minlength=n + 1)[1:]
        for pixels_k, correct_k, radius in zip(pixels, correct, radii_px, strict=True):
            if pixels_k == 0:
                continue
            band = next(i for i, (lo, hi) in enumerate(self.bands) if lo <= radius < hi)
            self.total[band] += 1
            self.found[band] += int(correct_k >= 0.5 * pixels_k)

    def recall(self) -> dict[str, float | None]:
        """Found / counted per band (None where no object fell in the band)."""
        return {
            band_name(b): (float(f / t) if t else None)
            for b, f, t in zip(self.bands, self.found, self.total, strict=True)
        }

    def counts(self) -> dict[str, int]:
        return {band_name(b): int(t) for b, t in zip(self.bands, self.total, strict=True)}
