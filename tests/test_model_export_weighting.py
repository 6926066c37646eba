"""Small-object weighting: a pixel of an object that fills little of its neighbourhood weighs
more, up to the cap; background 1, ignored 0; the box sums are exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_export.datasets import IGNORE_INDEX
from model_export.weighting import (
    WINDOW,
    box_sum,
    small_object_weights,
    weighted_cross_entropy,
)


def _disc(labels: torch.Tensor, cy: int, cx: int, r: int, value: int) -> None:
    yy, xx = torch.meshgrid(
        torch.arange(labels.shape[1]), torch.arange(labels.shape[2]), indexing="ij"
    )
    labels[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def test_box_sums_equal_a_plain_convolution() -> None:
    x = torch.rand(2, 3, 37, 50)
    kernel = torch.ones(3, 1, 9, 9)
    expected = F.conv2d(x, kernel, padding=4, groups=3)
    torch.testing.assert_close(box_sum(x, 9), expected, rtol=1e-4, atol=1e-3)


def test_small_objects_weigh_more_up_to_the_cap() -> None:
    labels = torch.zeros(1, 300, 300, dtype=torch.int64)
    _disc(labels, 150, 80, 60, 1)  # large
    _disc(labels, 150, 230, 20, 2)  # small: ~1,257 of the 6,561 pixels of its box
    _disc(labels, 40, 250, 5, 3)  # tiny
    labels[0, :, 295:] = IGNORE_INDEX
    w = small_object_weights(labels, 4, max_weight=8.0)
    assert w[0, 150, 80] == 1.0  # deep inside the large disc
    assert 4.5 < w[0, 150, 230] < 6.0  # the small one: 6,561 / ~1,257
    assert w[0, 40, 250] == 8.0  # the tiny one reaches the cap
    assert (w[0][labels[0] == 0] == 1.0).all()
    assert (w[0, :, 295:] == 0).all()
    assert WINDOW % 2 == 1


def test_weighted_loss_is_the_plain_loss_when_nothing_is_small() -> None:
    labels = torch.ones(2, 64, 64, dtype=torch.int64)  # one object filling every frame
    logits = torch.randn(2, 2, 64, 64)
    plain = F.cross_entropy(logits, labels)
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, max_weight=8.0), plain)
