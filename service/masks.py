"""The pixel output end: a uint8 label map -> palette PNG, COCO RLE or overlay.

PNG and RLE take the model-sized label map and the image's size and never build the full-size
map: a nearest-neighbour upscale only repeats rows and columns, so the PNG is written from the
distinct rows (``service.png``) and the RLE runs from the distinct columns. COCO RLE is produced
without pycocotools, with array operations only.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from service import model_card, png

RGB = model_card.RGB

UNKNOWN_CLASS_COLOR: RGB = (0, 0, 0)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 labels -> (H, W) for ``size`` = (W, H), nearest neighbour.

    The inverse of the "stretch" resize policy, with the same pixel-centre alignment as the
    bilinear input resize: output pixel i takes input pixel floor((i + 0.5) * n / N), in exact
    integer arithmetic (floating point would round ties either way). Returns ``labels`` itself
    when the size already matches.
    """
    _check_labels(labels)
    width, height = size
    if labels.shape == (height, width):
        return labels
    # Columns first, on the small map; then whole rows, which NumPy copies as contiguous blocks
    # (4000x3000 from 192x192: 0.8 ms, against 6.3 ms rows-first; docs/PERFORMANCE.md).
    return labels.take(_nearest(labels.shape[1], width), axis=1).take(
        _nearest(labels.shape[0], height), axis=0
    )


def _nearest(n: int, new_n: int) -> np.ndarray:
    """For each of ``new_n`` output pixels, the index of the input pixel under its centre."""
    return (2 * np.arange(new_n, dtype=np.int64) + 1) * n // (2 * new_n)


def _runs(n: int, new_n: int) -> tuple[np.ndarray, np.ndarray]:
    """``_nearest`` as runs: the input indices used, in order, and how many outputs take each."""
    index, repeats = np.unique(_nearest(n, new_n), return_counts=True)  # sorted already
    return index, repeats


def _target_size(labels: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
    return size if size is not None else (labels.shape[1], labels.shape[0])


def encode_png(
    labels: np.ndarray,
    palette: Sequence[RGB],
    *,
    size: tuple[int, int] | None = None,
    compress_level: int = 1,
) -> bytes:
    """A palette ("P") PNG of ``labels`` resized to ``size`` (W, H) as ``resize_labels`` does
    (default: as is): pixel value = class id, palette entry i = the colour of class i.

    The palette always has 256 entries (unused ones black) so the PNG stays 8-bit and every
    possible label value has an entry.
    """
    _check_labels(labels)
    width, height = _target_size(labels, size)
    rows, repeats = _runs(labels.shape[0], height)
    pixels = labels.take(rows, axis=0).take(_nearest(labels.shape[1], width), axis=1)
    return png.palette_png(pixels, repeats, _palette_array(palette).tobytes(), level=compress_level)


def encode_overlay(
    image: Image.Image,
    labels: np.ndarray,
    palette: Sequence[RGB],
    alpha: float,
    *,
    compress_level: int = 1,
) -> bytes:
    """``image`` with class colours blended in at opacity ``alpha`` where the label is not 0.

    The blend is exact integer arithmetic with alpha quantised to 1/255 steps:
        a = round(alpha * 255);  out = (pixel * (255 - a) + colour * a + 127) // 255
    Background pixels (label 0) are returned unchanged.
    """
    _check_labels(labels)
    if image.size != (labels.shape[1], labels.shape[0]):
        raise ValueError(f"image size {image.size} != labels size {labels.shape[::-1]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    a = round(alpha * 255)
    colours = _palette_image(labels, palette).convert("RGB")
    # Per-pixel weight: a on classes, 0 on background. Pillow's masked paste computes exactly
    # round((pixel * (255 - w) + colour * w) / 255) in C, which is the documented formula.
    weight = _grey_image(labels).point([0] + [a] * 255)
    return _png(Image.composite(colours, image, weight), compress_level)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a binary (H, W) mask, exactly as ``pycocotools.mask.encode``.

    Returns ``{"size": [H, W], "counts": str}``: column-major runs starting with a (possibly
    empty) run of zeros, in COCO's compressed string form.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    starts, ends, _ = _segments(flat.view(np.uint8))
    ones = flat[starts]
    counts = _class_counts(starts[ones], ends[ones], flat.size)
    return {"size": [height, width], "counts": _compress_counts(counts)}


def encode_rle(
    labels: np.ndarray,
    classes: Sequence[model_card.ClassInfo],
    *,
    size: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One COCO RLE mask per class present in ``labels`` resized to ``size`` (W, H) as
    ``resize_labels`` does (default: as is), with area > 0, ordered by class id.

    Each entry: ``{"class_id", "label", "color": [r, g, b], "area", "rle": {"size", "counts"}}``.
    A label value with no entry in ``classes`` (a model emitting more classes than its card
    declares) is reported as ``"class_<id>"`` with colour ``UNKNOWN_CLASS_COLOR`` rather than
    failing the request; the masks then still partition the image.
    """
    _check_labels(labels)
    width, height = _target_size(labels, size)
    columns, repeats = _runs(labels.shape[1], width)
    # The distinct columns, each scaled to full height and laid out contiguously (column-major).
    distinct = np.ascontiguousarray(labels.take(columns, axis=1).T)
    distinct = distinct.take(_nearest(labels.shape[0], height), axis=1)
    starts, ends, values = _column_major_segments(distinct, repeats)
    n_pixels = width * height
    # Group the segments by class; a stable sort keeps each class's segments in pixel order.
    order = np.argsort(values, kind="stable")
    starts, ends, values = starts[order], ends[order], values[order]
    present, first = np.unique(values, return_index=True)
    bounds = [*first.tolist(), values.size]
    known = {c.id: c for c in classes}

    masks: list[dict[str, Any]] = []
    for i, class_id in enumerate(present.tolist()):
        lo, hi = bounds[i], bounds[i + 1]
        class_starts, class_ends = starts[lo:hi], ends[lo:hi]
        info = known.get(class_id)
        masks.append(
            {
                "class_id": class_id,
                "label": info.label if info is not None else f"class_{class_id}",
                "color": list(info.color if info is not None else UNKNOWN_CLASS_COLOR),
                "area": int((class_ends - class_starts).sum()),
                "rle": {
                    "size": [height, width],
                    "counts": _compress_counts(_class_counts(class_starts, class_ends, n_pixels)),
                },
            }
        )
    return masks


def _segments(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal values in ``flat``: (start, end) indices (end exclusive), value."""
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], changes)).astype(np.int64)
    ends = np.concatenate((changes, [flat.size])).astype(np.int64)
    if flat.size == 0:
        starts, ends = starts[:0], ends[:0]
    return starts, ends, flat[starts]


def _column_major_segments(
    columns: np.ndarray, repeats: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_segments`` of the column-major mask whose column j of ``columns`` (n, H) is repeated
    ``repeats[j]`` times: each distinct column is scanned once, its segments are copied to each
    repeat with the repeat's offset, and segments that continue across a column boundary merge.
    """
    n, height = columns.shape
    flat = columns.ravel()
    first = np.empty(flat.size, dtype=bool)  # a segment starts here within its column
    first[0] = True
    np.not_equal(flat[1:], flat[:-1], out=first[1:])
    first[::height] = True
    local = np.flatnonzero(first)
    per_column = np.bincount(local // height, minlength=n)
    column_start = np.cumsum(per_column) - per_column  # index in ``local`` of column j's first
    # For every output column: which distinct column it shows, and its segments' indices.
    shown = np.repeat(np.arange(n), repeats)
    counts = per_column[shown]
    total = int(counts.sum())
    gather = np.arange(total) + np.repeat(
        column_start[shown] - (np.cumsum(counts) - counts), counts
    )
    output_column = np.repeat(np.arange(shown.size, dtype=np.int64), counts)
    starts = output_column * height + local[gather] % height
    values = flat[local[gather]]
    keep = np.empty(total, dtype=bool)  # merge a segment into the previous one of equal value
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    starts, values = starts[keep], values[keep]
    ends = np.append(starts[1:], shown.size * height)
    return starts, ends, values


def _class_counts(starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """COCO counts of the mask that is 1 on the segments [starts[i], ends[i]) of n pixels.

    Counts alternate zeros, ones, zeros, ...; the first (zeros) run may be empty; a trailing run
    of zeros is present only when the mask does not end with a one (as pycocotools writes it).
    Segments of one class are never adjacent (they would be one run), so no other run is empty.
    """
    boundaries = np.empty(2 * starts.size + 2, dtype=np.int64)
    boundaries[0] = 0
    boundaries[1:-1:2] = starts
    boundaries[2:-1:2] = ends
    boundaries[-1] = n
    counts = np.diff(boundaries)
    if starts.size and ends[-1] == n:
        counts = counts[:-1]
    return counts


def _compress_counts(counts: np.ndarray) -> str:
    """pycocotools' ``rleToString``: each count (minus the count two before it, from the fourth
    on) is written as little-endian 5-bit groups, bit 0x20 marking "more groups follow", the
    sign carried by 0x10 of the last group, each group offset by 48 into printable ASCII."""
    values = counts.astype(np.int64)  # a copy: the deltas below must read the original counts
    values[3:] -= counts[1:-2]
    # Group k of every value at once; a value needs groups until the rest is its sign extension.
    shifts = np.arange(0, 65, 5, dtype=np.int64)  # 13 groups cover any int64
    rest = values[:, None] >> shifts[None, :]  # arithmetic shift, like the C code's signed long
    groups = rest & 0x1F
    sign_extension = np.where(groups & 0x10, -1, 0)
    more = np.empty_like(rest, dtype=bool)
    more[:, :-1] = rest[:, 1:] != sign_extension[:, :-1]
    more[:, -1] = False
    # Emit group k while every earlier group said "more" (the first group is always emitted).
    emit = np.ones_like(more)
    emit[:, 1:] = np.logical_and.accumulate(more[:, :-1], axis=1)
    chars = (groups | np.where(more, 0x20, 0)) + 48
    return chars[emit].astype(np.uint8).tobytes().decode("ascii")


def _palette_array(palette: Sequence[RGB]) -> np.ndarray:
    """(256, 3) uint8: palette[i] for i < len(palette), black after."""
    table = np.zeros((256, 3), dtype=np.uint8)
    if len(palette):
        colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
        table[: len(colours)] = colours
    return table


def _palette_image(labels: np.ndarray, palette: Sequence[RGB]) -> Image.Image:
    image = _label_image(labels, "P")
    image.putpalette(_palette_array(palette).tobytes(), "RGB")
    return image


def _grey_image(labels: np.ndarray) -> Image.Image:
    return _label_image(labels, "L")


def _label_image(labels: np.ndarray, mode: str) -> Image.Image:
    """An 8-bit image over the label bytes (shared, not copied, when already contiguous)."""
    height, width = labels.shape
    return Image.frombuffer(mode, (width, height), np.ascontiguousarray(labels), "raw", mode, 0, 1)


def _png(image: Image.Image, compress_level: int) -> bytes:
    buffer = io.BytesIO()
    # Z_RLE: after PNG's row filters, masks and photos are mostly runs; it is both faster and
    # smaller than zlib's default strategy here (measured: docs/PERFORMANCE.md).
    image.save(buffer, format="PNG", compress_level=compress_level, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
