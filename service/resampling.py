"""Class scores to labels: their argmax (``class_argmax``), and the scores of a model whose
output is smaller than its input (SegFormer's are 1/4 of it) scaled to the input's size as
PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)`` scales them (which is what
Hugging Face's ``post_process_semantic_segmentation`` does).

    labels = class_argmax(out)                                 # uint8 (N, h, w)
    scores = scale_scores(out, (512, 512))                     # (N, C, 512, 512) float32
    labels = scaled_argmax(out, class_argmax(out), (512, 512))  # its argmax, uint8 (N, 512, 512)

Bilinear with half-pixel centres is separable: each output row (column) blends two source rows
(columns), so it is two gathers and a weighted sum per axis, never a dense matrix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

_CHUNK_FLOATS = 1 << 20  # boundary pixels x classes blended at once in scaled_argmax (4 MiB)


@dataclass(frozen=True, slots=True)
class Taps:
    """For each output pixel along one axis: its two source pixels and their weights."""

    first: np.ndarray  # int64
    second: np.ndarray  # int64: first + 1, or first at the far edge
    first_weight: np.ndarray  # float32
    second_weight: np.ndarray  # float32, 1 - first_weight up to rounding


@functools.lru_cache(maxsize=256)
def linear_taps(n_in: int, n_out: int) -> Taps:
    """The taps of ``n_out`` pixels scaled from ``n_in``, with PyTorch's float32 arithmetic:
    source = max(0, n_in / n_out * (i + 0.5) - 0.5), first = floor(source), weight of the second
    = source - first. Computed once per pair (every batch of a shape scales alike): read-only."""
    scale = np.float32(n_in) / np.float32(n_out)
    # One rounding of scale * (i + 0.5) - 0.5, as PyTorch's x86 builds compute it (a fused
    # multiply-add): in float64 both the product of two float32 and the subtraction are exact.
    centres = np.arange(n_out, dtype=np.float64) + 0.5
    source = np.maximum((np.float64(scale) * centres - 0.5).astype(np.float32), np.float32(0))
    first = np.minimum(source.astype(np.int64), n_in - 1)
    second_weight = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
    second = np.minimum(first + 1, n_in - 1)
    return Taps(*_read_only(first, second, np.float32(1) - second_weight, second_weight))


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for array in arrays:
        array.flags.writeable = False
    return arrays


def scale_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) float scores scaled bilinearly to ``size`` (H, W): float32 (N, C, H, W)."""
    rows = linear_taps(scores.shape[2], size[0])
    cols = linear_taps(scores.shape[3], size[1])
    # Along the width first, then the height: PyTorch's order, so that the roundings agree.
    # (``take`` returns C-ordered arrays; fancy indexing on the last axis may not.)
    blended = scores.take(cols.first, axis=3) * cols.first_weight
    blended += scores.take(cols.second, axis=3) * cols.second_weight
    out = blended.take(rows.first, axis=2) * rows.first_weight[:, None]
    out += blended.take(rows.second, axis=2) * rows.second_weight[:, None]
    return out


def class_argmax(logits: np.ndarray) -> np.ndarray:
    """``logits.argmax(axis=1).astype(np.uint8)`` for (N, classes, h, w) scores, ~9x faster.

    NumPy's argmax over an axis that is not the last first copies the scores into a contiguous
    transposed array (0.3 ms per 5 x 128 x 128 image, a fifth of inference); one pass per class
    plane keeps the running best instead. Ties go to the first class, as with NumPy; NaN scores
    (a broken model) fall back to NumPy, so that case answers exactly as before too.
    """
    best = logits[:, 0].copy()
    labels = np.zeros(best.shape, np.uint8)
    better = np.empty(best.shape, np.bool_)
    for k in range(1, logits.shape[1]):
        plane = logits[:, k]
        np.greater(plane, best, out=better)
        flag = better.view(np.uint8)
        labels += flag * np.uint8(k) - flag * labels  # = k where class k scores higher
        np.maximum(best, plane, out=best)
    if np.isnan(best).any():  # np.maximum carries a NaN of any class into best
        return logits.argmax(axis=1).astype(np.uint8)
    return labels


def scaled_argmax(scores: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``scale_scores(scores, size).argmax(axis=1)`` as uint8 (N, H, W), given ``labels``, the
    argmax (N, h, w) of ``scores`` at their own size, without scaling every class's scores.

    An output pixel whose four source pixels share a label keeps it: its scores are a weighted
    mean of theirs with non-negative weights, so that class still scores highest. Only the other
    pixels (along class boundaries) are blended, all classes at once, with the arithmetic of
    ``scale_scores``. The answer is the same except where two classes' blended scores round to
    the same float, where the full argmax takes the lower class id.

    When both axes scale by whole factors (a stride-4 model's scores to its input), the pixels
    between four source pixels' centres form an f x f block with the same weights in every
    block: those blocks are found and blended a block at a time, and only the frame outside the
    first and last centres pixel by pixel.
    """
    rows = linear_taps(labels.shape[1], size[0])
    cols = linear_taps(labels.shape[2], size[1])
    plan = _block_plan((labels.shape[1], labels.shape[2]), (size[0], size[1]))
    if plan is None:
        return _scaled_argmax_by_pixel(scores, labels, rows, cols)
    out = labels.take(rows.first, axis=1).take(cols.first, axis=2)
    for image in range(len(out)):
        _blend_blocks(scores[image], labels[image], out[image], plan.rows, plan.cols)
        edge = _on_boundary(labels[image], plan.frame, size[1], rows, cols)
        _blend_boundary(scores[image], out[image], edge, rows, cols)
    return out


def _scaled_argmax_by_pixel(
    scores: np.ndarray, labels: np.ndarray, rows: Taps, cols: Taps
) -> np.ndarray:
    upper, lower = labels.take(rows.first, axis=1), labels.take(rows.second, axis=1)
    out = upper.take(cols.first, axis=2)
    corners = (
        upper.take(cols.second, axis=2),
        lower.take(cols.first, axis=2),
        lower.take(cols.second, axis=2),
    )
    boundary = (out != corners[0]) | (out != corners[1]) | (out != corners[2])
    for image in range(len(out)):
        _blend_boundary(scores[image], out[image], np.flatnonzero(boundary[image]), rows, cols)
    return out


@dataclass(frozen=True, slots=True)
class _Blocks:
    """Along one axis, output pixels ``start + f*k .. start + f*k + f - 1`` blend source pixels
    k and k + 1, the p-th of them with ``first_weight[p]`` and ``second_weight[p]`` for every
    k < ``count``."""

    start: int
    factor: int
    count: int
    first_weight: np.ndarray  # (factor,) float32
    second_weight: np.ndarray

    @property
    def stop(self) -> int:
        return self.start + self.factor * self.count

    @classmethod
    def of(cls, taps: Taps) -> _Blocks | None:
        """The blocks of ``taps`` when it scales by a whole factor with the same weights in each
        block (exactly, in float32: powers of two do), else None."""
        n_out, n_in = len(taps.first), int(taps.first[-1]) + 1
        factor, rest = divmod(n_out, n_in)
        if rest or factor < 2 or n_in < 2:
            return None
        start, count = factor // 2, n_in - 1
        first = slice(start, start + factor)
        blocks = cls(start, factor, count, taps.first_weight[first], taps.second_weight[first])
        inside = slice(start, blocks.stop)
        source = np.repeat(np.arange(count), factor)
        same = (
            np.array_equal(taps.first[inside], source)
            and np.array_equal(taps.second[inside], source + 1)
            and np.array_equal(taps.first_weight[inside], np.tile(blocks.first_weight, count))
            and np.array_equal(taps.second_weight[inside], np.tile(blocks.second_weight, count))
        )
        return blocks if same else None


@dataclass(frozen=True, slots=True)
class _BlockPlan:
    rows: _Blocks
    cols: _Blocks
    frame: np.ndarray  # flat indices of the output pixels outside the blocks (read-only)


@functools.lru_cache(maxsize=64)
def _block_plan(source: tuple[int, int], size: tuple[int, int]) -> _BlockPlan | None:
    """The blocks of scaling (h, w) ``source`` to (H, W) ``size``, None unless both axes have
    them; once per pair of shapes."""
    rows = _Blocks.of(linear_taps(source[0], size[0]))
    cols = _Blocks.of(linear_taps(source[1], size[1]))
    if rows is None or cols is None:
        return None
    outside = np.ones(size, bool)
    outside[rows.start : rows.stop, cols.start : cols.stop] = False
    (frame,) = _read_only(np.flatnonzero(outside))
    return _BlockPlan(rows, cols, frame)


def _blend_blocks(
    scores: np.ndarray, labels: np.ndarray, out: np.ndarray, rows: _Blocks, cols: _Blocks
) -> None:
    """Set the blocks of ``out`` (H, W) whose four source pixels' ``labels`` (h, w) differ to
    the argmax of one image's (C, h, w) ``scores`` blended there."""
    corners = (labels[:-1, :-1], labels[:-1, 1:], labels[1:, :-1], labels[1:, 1:])
    mixed = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
    r, c = np.nonzero(mixed)
    if not r.size:
        return
    classes, width = scores.shape[0], scores.shape[2]
    by_class = scores.reshape(classes, -1)
    view = out[rows.start : rows.stop, cols.start : cols.stop].reshape(
        rows.count, rows.factor, cols.count, cols.factor
    )
    step = max(1, _CHUNK_FLOATS // (classes * rows.factor * cols.factor))
    # Blocks on the last axis, so that every operation runs along a long contiguous one.
    w0, w1 = cols.first_weight[:, None], cols.second_weight[:, None]
    v0, v1 = rows.first_weight[:, None, None], rows.second_weight[:, None, None]
    for start in range(0, r.size, step):
        i, j = r[start : start + step], c[start : start + step]
        q = i * width + j
        # The arithmetic (and its order) of _blend_boundary, for f x f pixels of each block.
        s00, s01, s10, s11 = (
            by_class.take(q + k, axis=1)[:, None] for k in (0, 1, width, width + 1)
        )
        top = s00 * w0 + s01 * w1  # (C, f, n)
        bottom = s10 * w0 + s11 * w1
        best = class_argmax((top[:, None] * v0 + bottom[:, None] * v1)[None])[0]  # (f, f, n)
        view[i, :, j, :] = best.transpose(2, 0, 1)


def _on_boundary(
    labels: np.ndarray, pixels: np.ndarray, width: int, rows: Taps, cols: Taps
) -> np.ndarray:
    """Those of the flat output indices ``pixels`` whose four source pixels' labels differ."""
    i, j = np.divmod(pixels, width)
    r0, r1, c0, c1 = rows.first[i], rows.second[i], cols.first[j], cols.second[j]
    first = labels[r0, c0]
    differ = (first != labels[r0, c1]) | (first != labels[r1, c0]) | (first != labels[r1, c1])
    return pixels[differ]


def _blend_boundary(
    scores: np.ndarray, labels: np.ndarray, pixels: np.ndarray, rows: Taps, cols: Taps
) -> None:
    """Set ``labels`` (H, W) at the flat indices ``pixels`` to the argmax of one image's
    (C, h, w) ``scores`` blended there, a chunk of pixels at a time."""
    if not pixels.size:
        return
    # Each source pixel's scores as one contiguous row of a 2-D array: the gathers below are
    # row takes by one flat index (~20 % faster than indexing by row and column).
    classes, width = scores.shape[0], scores.shape[2]
    by_pixel = np.ascontiguousarray(scores.transpose(1, 2, 0)).reshape(-1, classes)
    step = max(1, _CHUNK_FLOATS // classes)
    flat = labels.reshape(-1)
    for start in range(0, pixels.size, step):
        index = pixels[start : start + step]
        i, j = np.divmod(index, labels.shape[1])
        r0, r1 = rows.first[i] * width, rows.second[i] * width
        c0, c1 = cols.first[j], cols.second[j]
        w0, w1 = cols.first_weight[j, None], cols.second_weight[j, None]
        top = by_pixel.take(r0 + c0, axis=0) * w0
        top += by_pixel.take(r0 + c1, axis=0) * w1
        bottom = by_pixel.take(r1 + c0, axis=0) * w0
        bottom += by_pixel.take(r1 + c1, axis=0) * w1
        top *= rows.first_weight[i, None]
        bottom *= rows.second_weight[i, None]
        top += bottom
        flat[index] = top.argmax(axis=1)
