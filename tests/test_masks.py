"""service.masks against independent oracles: pycocotools for RLE, Pillow for PNG and resizing."""

from __future__ import annotations

import io
import zlib
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco

from service.masks import (
    UNKNOWN_CLASS_COLOR,
    encode_overlay,
    encode_png,
    encode_rle,
    resize_labels,
    rle_encode,
)
from service.model_card import ClassInfo, voc_palette

# pycocotools 2.0.x predates NumPy 2's __array__(copy=...) protocol; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

rng = np.random.default_rng(20261124)

PALETTE = voc_palette(5)
CLASSES = [
    ClassInfo(id=i, label=name, color=PALETTE[i])
    for i, name in enumerate(["background", "disc", "square", "triangle", "ring"])
]


def coco_encode(mask: np.ndarray) -> dict:
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def coco_decode(rle: dict) -> np.ndarray:
    return coco.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def _checkerboard(h: int, w: int) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)


def _long_runs() -> np.ndarray:
    # Runs of 70000 and 140000 pixels: counts above 2^16 need four and more 5-bit groups,
    # and the delta coding (count minus the count two before) goes negative.
    mask = np.zeros((1000, 300), dtype=bool)
    mask[:, 70:210] = True
    mask[500:, 250] = True
    return mask


EDGE_MASKS = {
    "empty": np.zeros((7, 5), dtype=bool),
    "full": np.ones((7, 5), dtype=bool),
    "1x1-zero": np.zeros((1, 1), dtype=bool),
    "1x1-one": np.ones((1, 1), dtype=bool),
    "1xN": rng.random((1, 37)) < 0.5,
    "Nx1": rng.random((41, 1)) < 0.5,
    "odd": rng.random((13, 17)) < 0.3,
    "starts-with-one": np.eye(9, dtype=bool),
    "ends-with-one": np.eye(9, dtype=bool)[::-1],
    "checkerboard": _checkerboard(31, 29),
    "long-runs": _long_runs(),
    "long-runs-inverted": ~_long_runs(),
    "sparse": rng.random((480, 640)) < 0.001,
    "dense": rng.random((480, 640)) < 0.999,
    "uint8-values": rng.integers(0, 3, (20, 30)).astype(np.uint8),  # nonzero = in the mask
}


@pytest.mark.parametrize("name", EDGE_MASKS)
def test_rle_encode_equals_pycocotools(name: str) -> None:
    mask = EDGE_MASKS[name]

    rle = rle_encode(mask)

    assert rle == coco_encode(mask != 0)
    np.testing.assert_array_equal(coco_decode(rle), mask != 0)


@pytest.mark.parametrize("density", [0.02, 0.5, 0.98])
def test_rle_encode_equals_pycocotools_on_random_masks(density: float) -> None:
    for _ in range(20):
        h, w = rng.integers(1, 120, size=2)
        mask = rng.random((h, w)) < density
        assert rle_encode(mask) == coco_encode(mask)


def test_rle_encode_reads_any_memory_layout() -> None:
    mask = rng.random((40, 60)) < 0.4
    for view in (np.asfortranarray(mask), mask[::2, ::3], mask.T):
        assert rle_encode(view) == coco_encode(view)


def _shapes(h: int = 120, w: int = 160) -> np.ndarray:
    """A label map with a few shapes of classes 1, 2, 4 (class 3 absent) on background."""
    labels = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    labels[(yy - 40) ** 2 + (xx - 50) ** 2 < 25**2] = 1
    labels[70:110, 90:150] = 2
    labels[5:20, 120:155] = 4
    return labels


def test_encode_rle_one_exact_mask_per_present_class() -> None:
    labels = _shapes()

    masks = encode_rle(labels, CLASSES)

    assert [m["class_id"] for m in masks] == [0, 1, 2, 4]
    total = np.zeros(labels.shape, dtype=int)
    for entry in masks:
        class_id = entry["class_id"]
        expected = labels == class_id
        assert entry["label"] == CLASSES[class_id].label
        assert entry["color"] == list(PALETTE[class_id])
        assert entry["area"] == int(expected.sum())
        assert entry["rle"] == coco_encode(expected)
        total += coco_decode(entry["rle"])
    np.testing.assert_array_equal(total, 1)  # disjoint, and together they cover every pixel
    assert sum(m["area"] for m in masks) == labels.size


def test_encode_rle_on_random_labels_matches_per_class_masks() -> None:
    labels = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    labels[labels == 3] = 0

    masks = encode_rle(labels, CLASSES)

    assert [m["class_id"] for m in masks] == sorted(set(np.unique(labels).tolist()))
    for entry in masks:
        assert entry["rle"] == coco_encode(labels == entry["class_id"])


def test_encode_rle_single_class_image() -> None:
    labels = np.full((4, 6), 2, dtype=np.uint8)

    masks = encode_rle(labels, CLASSES)

    assert len(masks) == 1
    assert masks[0]["area"] == 24
    assert masks[0]["rle"] == coco_encode(np.ones((4, 6), dtype=bool))


def test_encode_rle_survives_labels_beyond_the_card() -> None:
    labels = _shapes()
    labels[0:3, 0:3] = 9  # a model that emits a class its card does not declare

    masks = encode_rle(labels, CLASSES)

    unknown = masks[-1]
    assert unknown["class_id"] == 9
    assert unknown["label"] == "class_9"
    assert unknown["color"] == list(UNKNOWN_CLASS_COLOR)
    assert unknown["area"] == 9
    assert sum(m["area"] for m in masks) == labels.size


def _decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_encode_png_is_a_palette_png_of_class_ids() -> None:
    labels = _shapes()

    image = _decode_png(encode_png(labels, PALETTE))

    assert image.format == "PNG"
    assert image.mode == "P"
    assert image.size == (labels.shape[1], labels.shape[0])
    np.testing.assert_array_equal(np.asarray(image), labels)
    colours = np.asarray(image.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
    assert len(colours) == 256
    np.testing.assert_array_equal(colours[: len(PALETTE)], PALETTE)
    assert not colours[len(PALETTE) :].any()
    # Viewed as a picture, each pixel shows its class colour.
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(PALETTE)[labels])


def test_encode_png_compression_level_changes_size_not_pixels() -> None:
    labels = _shapes(480, 640)

    stored, fast = (encode_png(labels, PALETTE, compress_level=level) for level in (0, 1))

    assert len(fast) < len(stored) / 10
    np.testing.assert_array_equal(np.asarray(_decode_png(stored)), np.asarray(_decode_png(fast)))


def test_encode_png_keeps_labels_beyond_the_palette() -> None:
    labels = np.array([[0, 1], [200, 255]], dtype=np.uint8)

    np.testing.assert_array_equal(np.asarray(_decode_png(encode_png(labels, PALETTE))), labels)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_encode_overlay_blends_classes_and_leaves_background(alpha: float) -> None:
    labels = _shapes()
    pixels = rng.integers(0, 256, (*labels.shape, 3), dtype=np.uint8)

    out = np.asarray(_decode_png(encode_overlay(Image.fromarray(pixels), labels, PALETTE, alpha)))

    assert out.shape == pixels.shape
    background = labels == 0
    np.testing.assert_array_equal(out[background], pixels[background])
    a = round(alpha * 255)
    for y, x in zip(*np.nonzero(~background), strict=True):
        for c in range(3):
            blend = (int(pixels[y, x, c]) * (255 - a) + PALETTE[labels[y, x]][c] * a + 127) // 255
            assert out[y, x, c] == blend
    if alpha == 1.0:
        np.testing.assert_array_equal(out[~background], np.asarray(PALETTE)[labels[~background]])


def test_encode_overlay_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="size"):
        encode_overlay(Image.new("RGB", (10, 10)), np.zeros((5, 10), np.uint8), PALETTE, 0.5)


def test_resize_labels_is_nearest_neighbour() -> None:
    labels = rng.integers(0, 5, (30, 40)).astype(np.uint8)

    resized = resize_labels(labels, (100, 45))

    assert resized.shape == (45, 100)
    assert resized.dtype == np.uint8
    # Each output pixel takes the label under its centre: source index floor((i + 0.5) * n / N),
    # computed exactly: a centre on a pixel boundary (7.5 * 40 / 100 = 3) takes the next pixel.
    for y in range(45):
        for x in range(100):
            source = labels[Fraction(2 * y + 1, 2) * 30 // 45, Fraction(2 * x + 1, 2) * 40 // 100]
            assert resized[y, x] == source


def test_resize_labels_downscale_invents_no_labels() -> None:
    labels = _shapes()

    resized = resize_labels(labels, (33, 17))

    assert resized.shape == (17, 33)
    assert set(np.unique(resized)) <= set(np.unique(labels))


def test_resize_labels_same_size_is_identity() -> None:
    labels = _shapes()

    np.testing.assert_array_equal(resize_labels(labels, (160, 120)), labels)


# -- scaled encoding: png and rle of the resized map, without building it -----------------------
# (rows, cols) of the model's map -> (W, H) of the image: upscales with repeats short enough to
# be written out and long enough for service.png to reuse compressed rows, downscales, identity.
SCALINGS = [
    ((128, 128), (640, 480)),
    ((128, 128), (4000, 3000)),
    ((7, 9), (2500, 301)),
    ((5, 3), (17, 1)),
    ((1, 1), (3000, 40)),
    ((64, 48), (20, 30)),
    ((30, 40), (40, 30)),
]


def _idat_stream(data: bytes) -> bytes:
    """The PNG's zlib stream, after checking every chunk's CRC (Pillow does not check IDAT's)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert crc == zlib.crc32(kind + body), kind
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    return idat


@pytest.mark.parametrize(("shape", "size"), SCALINGS)
def test_encode_png_with_size_equals_the_resized_map(shape, size) -> None:
    labels = rng.integers(0, 5, shape).astype(np.uint8)
    expected = resize_labels(labels, size)

    data = encode_png(labels, PALETTE, size=size)

    image = _decode_png(data)
    assert (image.mode, image.size) == ("P", size)
    np.testing.assert_array_equal(np.asarray(image), expected)
    # zlib checks the stream's Adler-32, which service.png computes for the rows it reuses.
    raw = np.frombuffer(zlib.decompress(_idat_stream(data)), np.uint8).reshape(size[1], -1)
    assert raw.shape[1] == size[0] + 1
    assert set(np.unique(raw[:, 0])) <= {0, 2}  # unfiltered rows and "Up" repeats only


def test_encode_png_reuses_rows_for_big_upscales() -> None:
    labels = _shapes(128, 128)
    small = encode_png(labels, PALETTE, size=(4000, 3000))
    # The same pixels compressed as a whole are a little smaller: the reuse costs flushes.
    whole = encode_png(resize_labels(labels, (4000, 3000)), PALETTE)

    assert len(small) < 2 * len(whole)
    np.testing.assert_array_equal(np.asarray(_decode_png(small)), np.asarray(_decode_png(whole)))


@pytest.mark.parametrize(("shape", "size"), SCALINGS)
def test_encode_rle_with_size_equals_pycocotools_on_the_resized_map(shape, size) -> None:
    labels = _shapes(*shape) if min(shape) >= 8 else rng.integers(0, 5, shape).astype(np.uint8)
    expected = resize_labels(labels, size)

    masks = encode_rle(labels, CLASSES, size=size)

    assert [m["class_id"] for m in masks] == np.unique(expected).tolist()
    for entry in masks:
        assert entry["rle"] == coco_encode(expected == entry["class_id"])
        assert entry["area"] == int((expected == entry["class_id"]).sum())
