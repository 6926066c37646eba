"""Pixel weights that give small objects a say in the loss.

Cross-entropy averages over pixels, so an object of radius 10 px (300 pixels) counts for a
hundredth of one of radius 100: a network can ignore small objects and lose almost nothing.
Here an object pixel weighs the inverse of the share of its neighbourhood (a ``WINDOW`` x
``WINDOW`` box, inside the image) that its class fills, capped at ``max_weight``: a pixel deep
inside a large object weighs 1, one of a small object, or of a thin part such as a star's point,
up to ``max_weight``. Background pixels weigh 1 and ignored ones 0. It needs only the mask (no
instance map), so it works on any dataset.

    loss = weighted_cross_entropy(logits, labels, max_weight=8.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_export.datasets import IGNORE_INDEX

WINDOW = 81  # an object of radius 40 px fills ~3/4 of it: objects from there up weigh ~1


def small_object_weights(labels: torch.Tensor, num_classes: int, max_weight: float) -> torch.Tensor:
    """(N, H, W) int64 class ids (IGNORE_INDEX: ignored) -> (N, H, W) float32 weights."""
    valid = labels != IGNORE_INDEX
    ids = torch.where(valid, labels, 0)
    one_hot = F.one_hot(ids, num_classes).permute(0, 3, 1, 2).float() * valid[:, None]
    share = box_sum(one_hot, WINDOW).gather(1, ids[:, None])[:, 0]
    share = share / box_sum(valid[:, None].float(), WINDOW)[:, 0].clamp(min=1.0)
    weights = (1.0 / share.clamp(min=1.0 / max_weight)).clamp(min=1.0)
    weights = torch.where(ids == 0, 1.0, weights)
    return weights * valid


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, max_weight: float
) -> torch.Tensor:
    """Cross-entropy with ``small_object_weights``, normalised by the weights' sum (so its scale
    stays that of the plain loss)."""
    weights = small_object_weights(labels, logits.shape[1], max_weight)
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp(min=1e-6)


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, C, H, W) sums over the odd ``window`` x ``window`` box around each pixel (zeros beyond
    the edges), from an integral image: two cumulative sums, whatever the window."""
    r = window // 2
    s = F.pad(x, (r + 1, r, r + 1, r)).cumsum(-1).cumsum(-2)
    return (
        s[..., window:, window:]
        - s[..., :-window, window:]
        - s[..., window:, :-window]
        + s[..., :-window, :-window]
    )
