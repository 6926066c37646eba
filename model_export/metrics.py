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
