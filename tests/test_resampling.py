"""Scores scaled to the input size as PyTorch's bilinear ``F.interpolate`` (align_corners=False)
scales them, which is what Hugging Face's SegFormer post-processing does; torch is the reference.

PyTorch has two CPU kernels for it, chosen by output size, thread count and channels, that round
differently (one fuses multiply-adds): the taps (which pixels, which weights) are compared bit for
bit, the blended values to within two float32 roundings, and the argmax exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.resampling import class_argmax, linear_taps, scale_scores, scaled_argmax

# (h, w) -> (H, W): the SegFormer factor, odd sizes, non-integer factors, down and up, identity,
# whole factors other than 4 and different ones per axis, a single source row.
SIZES = [
    ((16, 16), (64, 64)),
    ((120, 160), (480, 640)),
    ((12, 10), (36, 40)),
    ((9, 7), (18, 56)),
    ((1, 6), (4, 24)),
    ((33, 31), (129, 123)),
    ((5, 7), (17, 29)),
    ((10, 13), (23, 11)),
    ((128, 96), (512, 384)),
    ((129, 129), (513, 513)),
    ((40, 30), (40, 30)),
    ((2, 3), (150, 70)),
]


def torch_scaled(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(scores)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).numpy()


def taps_as_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): each output pixel's weight on each input pixel, from ``linear_taps``."""
    taps = linear_taps(n_in, n_out)
    matrix = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    matrix[rows, taps.first] += taps.first_weight
    matrix[rows, taps.second] += taps.second_weight
    return matrix


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(16, 64), (33, 129), (7, 131), (13, 65), (129, 513), (300, 97)]
)
def test_taps_are_torchs_bit_for_bit(n_in: int, n_out: int) -> None:
    # Scaling one impulse per input pixel along one axis (the other axis untouched, so its
    # weights are exactly 1) reads off torch's weights; 2 x n_out > 128 selects its generic
    # kernel, the one for large outputs such as a 512x512 mask.
    impulses = np.eye(n_in, dtype=np.float32).reshape(n_in, 1, n_in, 1)
    weights = torch_scaled(np.repeat(impulses, n_out, axis=3), (n_out, n_out))[:, 0, :, 0]
    np.testing.assert_array_equal(taps_as_matrix(n_in, n_out), weights.T)


@pytest.mark.parametrize(("source", "target"), SIZES)
def test_scale_scores_is_torch_interpolate(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(source) + sum(target))
    scores = (rng.standard_normal((2, 5, *source)) * 8).astype(np.float32)
    got = scale_scores(scores, target)
    expected = torch_scaled(scores, target)
    assert got.dtype == np.float32
    assert got.shape == (2, 5, *target)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * np.spacing(np.abs(scores).max()))


def test_float16_scores_are_scaled_in_float32() -> None:
    scores = np.random.default_rng(3).standard_normal((1, 4, 9, 11)).astype(np.float16)
    got = scale_scores(scores, (36, 44))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, scale_scores(scores.astype(np.float32), (36, 44)))


@pytest.mark.parametrize(("source", "target"), SIZES)
@pytest.mark.parametrize("classes", [3, 151])
def test_scaled_argmax_is_the_argmax_of_the_scaled_scores(
    source: tuple[int, int], target: tuple[int, int], classes: int
) -> None:
    rng = np.random.default_rng(classes)
    # Smooth scores (a coarse map upsampled) give regions and boundaries, as a model's do.
    coarse = rng.standard_normal((2, classes, *(max(1, n // 4) for n in source)))
    scores = torch_scaled(coarse.astype(np.float32), source) * 4
    labels = scaled_argmax(scores, class_argmax(scores), target)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, class_argmax(scale_scores(scores, target)))
    np.testing.assert_array_equal(labels, torch_scaled(scores, target).argmax(axis=1))


def test_scaled_argmax_of_uniform_scores_blends_nothing() -> None:
    scores = np.zeros((1, 3, 4, 4), np.float32)
    scores[:, 2] = 1
    labels = scaled_argmax(scores, class_argmax(scores), (16, 16))
    assert (labels == 2).all()
