"""Properties of the pixel ends: RLE round trips for any mask, and decode never fails untyped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as coco

from service.errors import InvalidImage, PayloadTooLarge
from service.imaging import decode
from service.masks import encode_png, encode_rle, resize_labels, rle_encode
from service.model_card import ClassInfo, voc_palette
from tests import images

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Pillow's notes on the damaged inputs
]

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.tuples(st.integers(1, 48), st.integers(1, 48))
# Masks with long runs as well as noise: runs of a random value, so both kinds of mask occur.
masks = shapes.flatmap(
    lambda shape: st.one_of(
        arrays(np.bool_, shape),
        st.lists(st.tuples(st.booleans(), st.integers(1, shape[0] * shape[1])), min_size=1).map(
            lambda runs: np.resize(
                np.repeat([v for v, _ in runs], [n for _, n in runs]), shape
            ).astype(bool)
        ),
    )
)


@BOUNDED
@given(masks)
def test_rle_round_trips_through_pycocotools(mask: np.ndarray) -> None:
    rle = rle_encode(mask)

    assert rle["size"] == list(mask.shape)
    reference = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode("ascii")
    decoded = coco.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded, mask)


CLASSES = [ClassInfo(id=i, label=f"c{i}", color=colour) for i, colour in enumerate(voc_palette(4))]


@BOUNDED
@given(shapes.flatmap(lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 5))))
def test_encode_rle_partitions_the_image(labels: np.ndarray) -> None:
    entries = encode_rle(labels, CLASSES)

    assert [e["class_id"] for e in entries] == np.unique(labels).tolist()
    covered = np.zeros(labels.shape, dtype=int)
    for entry in entries:
        rle = entry["rle"]
        mask = coco.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        np.testing.assert_array_equal(mask, labels == entry["class_id"])
        assert entry["area"] == int(mask.sum())
        covered += mask
    np.testing.assert_array_equal(covered, 1)


def _valid_images() -> list[bytes]:
    picture = images.quadrants(24, 16)
    return [
        images.encode(picture, "JPEG"),
        images.encode(picture, "JPEG", progressive=True),
        images.encode(picture.convert("CMYK"), "JPEG"),
        images.encode(picture, "PNG"),
        images.encode(picture.quantize(8), "PNG"),
        images.encode(Image.fromarray(np.arange(384, dtype=np.uint16).reshape(16, 24)), "PNG"),
        images.encode(picture, "WEBP"),
        images.encode(picture, "BMP"),
        images.encode(picture, "TIFF"),
        images.encode(picture, "TIFF", compression="tiff_lzw"),
        images.animated_gif([(255, 0, 0), (0, 255, 0)], (24, 16)),
        images.with_orientation(picture, 6),
    ]


VALID_IMAGES = _valid_images()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A valid image of some format with a few bytes overwritten, cut off or inserted."""
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "cut", "insert"]))
        if edit == "flip":
            data[at] = draw(st.integers(0, 255))
        elif edit == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def _decode_or_typed_error(data: bytes) -> None:
    try:
        decoded = decode(data, max_pixels=4_000_000, min_size=(8, 8))
    except (InvalidImage, PayloadTooLarge):
        return
    assert decoded.image.mode == "RGB"
    assert decoded.size[0] * decoded.size[1] <= 4_000_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_images())
def test_damaged_images_decode_or_raise_typed_errors(data: bytes) -> None:
    _decode_or_typed_error(data)


@BOUNDED
@given(
    st.binary(max_size=512)
    | st.sampled_from(
        [
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff",
            b"GIF89a",
            b"RIFF\x00\x00\x00\x00WEBP",
            b"BM",
            b"II*\x00",
        ]
    ).flatmap(lambda magic: st.binary(max_size=256).map(lambda tail: magic + tail))
)
def test_arbitrary_bytes_decode_or_raise_typed_errors(data: bytes) -> None:
    _decode_or_typed_error(data)


@BOUNDED
@given(
    shapes.flatmap(lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 5))),
    st.tuples(st.integers(1, 3000), st.integers(1, 300)),
)
def test_scaled_png_and_rle_equal_encoding_the_resized_map(
    labels: np.ndarray, size: tuple[int, int]
) -> None:
    resized = resize_labels(labels, size)

    png = Image.open(io.BytesIO(encode_png(labels, voc_palette(6), size=size)))
    np.testing.assert_array_equal(np.asarray(png), resized)
    entries = encode_rle(labels, CLASSES, size=size)
    assert [e["class_id"] for e in entries] == np.unique(resized).tolist()
    for entry in entries:
        reference = coco.encode(np.asfortranarray((resized == entry["class_id"]).astype(np.uint8)))
        assert entry["rle"]["counts"] == reference["counts"].decode("ascii")
