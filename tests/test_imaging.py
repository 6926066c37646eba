"""service.imaging: every accepted format, EXIF orientation, draft decoding, limits, prepare."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidImage, PayloadTooLarge
from service.imaging import decode, prepare, sniff_media_type
from service.model_card import InputSpec
from tests import images

MAX_PIXELS = 40_000_000


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _source(mode: str) -> Image.Image:
    """The quadrants picture in ``mode`` (palette modes quantised exactly, no dithering)."""
    picture = images.quadrants()
    if mode == "P":
        return picture.quantize(colors=4, dither=Image.Dither.NONE)
    if mode in ("RGBA", "LA"):
        converted = picture.convert(mode)
        alpha = np.tile(np.linspace(0, 255, picture.width).astype(np.uint8), (picture.height, 1))
        converted.putalpha(Image.fromarray(alpha))  # alpha varies; colours must survive it
        return converted
    return picture.convert(mode)


# (id, format, mode, save params, lossy)
FORMAT_CASES = [
    ("jpeg-baseline", "JPEG", "RGB", {"quality": 90}, True),
    ("jpeg-progressive", "JPEG", "RGB", {"quality": 90, "progressive": True}, True),
    ("jpeg-grey", "JPEG", "L", {"quality": 90}, True),
    ("jpeg-cmyk", "JPEG", "CMYK", {"quality": 90}, True),
    ("png-rgb", "PNG", "RGB", {}, False),
    ("png-rgba", "PNG", "RGBA", {}, False),
    ("png-grey", "PNG", "L", {}, False),
    ("png-grey-alpha", "PNG", "LA", {}, False),
    ("png-palette", "PNG", "P", {}, False),
    ("png-bilevel", "PNG", "1", {}, False),
    ("webp-lossless", "WEBP", "RGB", {"lossless": True}, False),
    # exact: libwebp would otherwise discard the colour of fully transparent pixels
    ("webp-lossless-rgba", "WEBP", "RGBA", {"lossless": True, "exact": True}, False),
    ("webp-lossy", "WEBP", "RGB", {"quality": 90}, True),
    ("bmp-rgb", "BMP", "RGB", {}, False),
    ("bmp-palette", "BMP", "P", {}, False),
    ("tiff-rgb", "TIFF", "RGB", {}, False),
    ("tiff-lzw", "TIFF", "RGB", {"compression": "tiff_lzw"}, False),
    ("tiff-cmyk", "TIFF", "CMYK", {}, False),
    ("gif", "GIF", "P", {}, False),
]


@pytest.mark.parametrize(
    ("fmt", "mode", "params", "lossy"),
    [case[1:] for case in FORMAT_CASES],
    ids=[case[0] for case in FORMAT_CASES],
)
def test_every_format_decodes_to_its_size_and_colours(
    fmt: str, mode: str, params: dict, lossy: bool
) -> None:
    source = _source(mode)
    data = images.encode(source, fmt, **params)

    decoded = decode(data, max_pixels=MAX_PIXELS)

    assert decoded.size == source.size
    assert decoded.image.size == source.size
    assert decoded.image.mode == "RGB"
    expected = _rgb(source.convert("RGBA").convert("RGB") if "A" in mode else source)
    error = np.abs(_rgb(decoded.image) - expected)
    if lossy:
        assert error.mean() < 4, error.mean()
    else:
        assert error.max() == 0


_RAMP16 = np.tile(np.linspace(0, 0xFFFF, 64).astype(np.uint16), (8, 1))
_RAMP_F = np.tile(np.linspace(-0.25, 1.25, 64).astype(np.float32), (8, 1))


@pytest.mark.parametrize(
    ("fmt", "image", "expected"),
    [
        ("PNG", Image.fromarray(_RAMP16), _RAMP16 >> 8),
        ("TIFF", Image.fromarray(_RAMP16), _RAMP16 >> 8),
        ("TIFF", Image.frombytes("I;16B", (64, 8), _RAMP16.astype(">u2").tobytes()), _RAMP16 >> 8),
        ("TIFF", Image.fromarray(_RAMP16.astype(np.int32)), _RAMP16 >> 8),  # mode "I"
        ("TIFF", Image.fromarray(_RAMP_F), np.rint(np.clip(_RAMP_F, 0, 1) * 255)),  # mode "F"
    ],
    ids=["png-I;16", "tiff-I;16", "tiff-I;16B", "tiff-I", "tiff-F"],
)
def test_wide_grey_scales_to_8_bits_instead_of_clipping(
    fmt: str, image: Image.Image, expected: np.ndarray
) -> None:
    decoded = _rgb(decode(images.encode(image, fmt), max_pixels=MAX_PIXELS).image)

    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], expected.astype(np.int16))


def test_16_bit_rgb_png_keeps_the_high_byte() -> None:
    pixels = np.random.default_rng(1).integers(0, 0x10000, (6, 5, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", 5, 6, 16, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + images._png_chunk(b"IHDR", header)
        + images._png_chunk(b"IDAT", zlib.compress(rows))
        + images._png_chunk(b"IEND", b"")
    )

    decoded = decode(data, max_pixels=MAX_PIXELS)

    np.testing.assert_array_equal(np.asarray(decoded.image), (pixels >> 8).astype(np.uint8))


def test_animated_gif_gives_its_first_frame() -> None:
    data = images.animated_gif([(255, 0, 0), (0, 255, 0), (0, 0, 255)])

    decoded = decode(data, max_pixels=MAX_PIXELS)

    assert decoded.size == (32, 24)
    assert set(map(tuple, _rgb(decoded.image).reshape(-1, 3).tolist())) == {(255, 0, 0)}


# EXIF orientation -> how the stored pixels are shown, written from the EXIF table with numpy
# (independent of the Pillow transposes the implementation uses).
UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # stored rotated 90 counter-clockwise: show 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, 1),  # show rotated 90 counter-clockwise
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_size_and_placement(
    orientation: int, fmt: str
) -> None:
    stored = images.quadrants(64, 48)
    data = images.with_orientation(stored, orientation, fmt)

    decoded = decode(data, max_pixels=MAX_PIXELS)

    expected = UPRIGHT[orientation](_rgb(stored))
    assert decoded.size == (expected.shape[1], expected.shape[0])
    assert decoded.image.size == decoded.size
    error = np.abs(_rgb(decoded.image) - expected)
    assert error.mean() < 4, error.mean()  # a wrong placement moves whole quadrants: error ~100


def _reduced(full: tuple[int, int], scale: int) -> tuple[int, int]:
    return -(-full[0] // scale), -(-full[1] // scale)  # libjpeg rounds up


def _largest_reduction(full: tuple[int, int], need: tuple[int, int]) -> int:
    def covers(scale: int) -> bool:
        width, height = _reduced(full, scale)
        return width >= need[0] and height >= need[1]

    return max(filter(covers, (1, 2, 4, 8)))


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return images.encode(images.quadrants(4000, 3000), "JPEG", quality=85)


def test_draft_decodes_a_big_jpeg_at_reduced_scale(big_jpeg: bytes) -> None:
    decoded = decode(big_jpeg, max_pixels=MAX_PIXELS, min_size=(320, 240))

    assert decoded.size == (4000, 3000)
    width, height = decoded.image.size
    assert width >= 320
    assert height >= 240
    assert width < 4000
    assert height < 3000
    scale = _largest_reduction((4000, 3000), (320, 240))
    assert decoded.image.size == _reduced((4000, 3000), scale)
    assert np.abs(_rgb(decoded.image) - _rgb(images.quadrants(width, height))).mean() < 4


def test_draft_keeps_enough_pixels_when_the_model_needs_them(big_jpeg: bytes) -> None:
    decoded = decode(big_jpeg, max_pixels=MAX_PIXELS, min_size=(1200, 1000))

    assert decoded.image.size == (2000, 1500)


def test_without_min_size_the_jpeg_is_decoded_at_full_resolution(big_jpeg: bytes) -> None:
    decoded = decode(big_jpeg, max_pixels=MAX_PIXELS)

    assert decoded.image.size == decoded.size == (4000, 3000)


def test_draft_respects_a_rotating_exif_orientation() -> None:
    # Stored 2000x1000, shown 1000x2000: a model needing 400x900 (as shown) allows 1/2, not 1/4
    # (1/4 would give 250x500 as shown, too narrow and too short).
    data = images.with_orientation(images.quadrants(2000, 1000), 6)

    decoded = decode(data, max_pixels=MAX_PIXELS, min_size=(400, 900))

    assert decoded.size == (1000, 2000)
    assert decoded.image.size == (500, 1000)


def test_non_jpeg_ignores_min_size() -> None:
    data = images.encode(images.quadrants(800, 600), "PNG")

    decoded = decode(data, max_pixels=MAX_PIXELS, min_size=(32, 32))

    assert decoded.image.size == decoded.size == (800, 600)


@pytest.mark.parametrize(
    "data",
    [
        images.png_declaring(50_000, 50_000),
        images.jpeg_declaring(65_500, 65_500),
        images.jpeg_declaring(10_000, 5_000),  # under Pillow's own guard, over our limit
    ],
    ids=["png-50000", "jpeg-65500", "jpeg-10000x5000"],
)
def test_bombs_are_refused_from_the_header(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        decode(data, max_pixels=MAX_PIXELS)
    # A decode would allocate gigabytes and take seconds (or fail as truncated: InvalidImage).
    assert time.perf_counter() - started < 1.0


def test_max_pixels_is_the_limit() -> None:
    data = images.encode(images.quadrants(100, 50), "PNG")

    assert decode(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(PayloadTooLarge, match="5000 pixels"):
        decode(data, max_pixels=4999)


def _truncated_jpeg() -> bytes:
    data = images.encode(images.quadrants(256, 256), "JPEG")
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = images.encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "PNG",
    )
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        _truncated_jpeg(),
        _truncated_png(),
        images.corrupt_png_crc(images.encode(images.quadrants(), "PNG")),
        b"\xff\xd8\xff\xe0" + b"\x00" * 64,  # a JPEG signature and nothing else
        images.encode(images.quadrants(), "PPM"),  # Pillow reads it, the service does not
        images.encode(images.quadrants(), "ICO"),
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        # Malformed headers on which Pillow raises ValueError rather than OSError (found by fuzzing)
        images.png_with_short_ihdr(),
        images.tiff_with_tag_type(278, 5),  # RowsPerStrip as a RATIONAL: "invalid extents"
    ],
    ids=[
        "empty",
        "one-byte",
        "random",
        "truncated-jpeg",
        "truncated-png",
        "png-bad-crc",
        "jpeg-signature-only",
        "ppm",
        "ico",
        "svg",
        "png-short-ihdr",
        "tiff-bad-tag-type",
    ],
)
def test_bad_bytes_are_invalid_images(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode(data, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
        ("GIF", "image/gif"),
    ],
)
def test_sniff_media_type(fmt: str, media_type: str) -> None:
    assert sniff_media_type(images.encode(images.quadrants(), fmt)) == media_type


@pytest.mark.parametrize("data", [b"", b"RIFF", b"hello world", b"\x00" * 16])
def test_sniff_media_type_unknown(data: bytes) -> None:
    assert sniff_media_type(data) is None


def test_concurrent_decodes_agree_with_sequential_ones() -> None:
    payloads = [
        images.encode(images.quadrants(64 + 8 * i, 48), fmt)
        for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"] * 3)
    ]
    sequential = [np.asarray(decode(p, max_pixels=MAX_PIXELS).image) for p in payloads]

    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda p: decode(p, max_pixels=MAX_PIXELS).image, payloads))

    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


SPEC = InputSpec(height=2, width=3, mean=(0.5, 0.25, 0.125), std=(0.5, 0.25, 2.0))


def _normalised(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The model card's formula, element by element in float64."""
    out = np.empty((3, *pixels.shape[:2]))
    for c in range(3):
        for y in range(pixels.shape[0]):
            for x in range(pixels.shape[1]):
                out[c, y, x] = (pixels[y, x, c] / 255.0 - spec.mean[c]) / spec.std[c]
    return out


def test_prepare_normalises_exactly() -> None:
    pixels = np.array(
        [[[0, 128, 255], [1, 2, 3], [255, 0, 7]], [[10, 20, 30], [254, 253, 252], [99, 100, 101]]],
        dtype=np.uint8,
    )

    x = prepare(Image.fromarray(pixels), SPEC)

    assert x.shape == (3, 2, 3)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    np.testing.assert_allclose(x, _normalised(pixels, SPEC), rtol=1e-6, atol=1e-6)


def test_prepare_float16() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 3), dtype=np.uint8)
    spec = SPEC.model_copy(update={"dtype": "float16"})

    x = prepare(Image.fromarray(pixels), spec)

    assert x.dtype == np.float16
    assert x.flags.c_contiguous
    np.testing.assert_allclose(x, _normalised(pixels, spec), rtol=1e-3, atol=1e-3)


def test_prepare_stretches_to_the_input_size() -> None:
    image = images.quadrants(64, 16)  # 4:1 stretched to 3:2, quadrants stay quadrants
    spec = InputSpec(height=20, width=30, mean=(0, 0, 0), std=(1, 1, 1))

    x = prepare(image, spec)

    assert x.shape == (3, 20, 30)
    pixel = np.rint(x * 255).astype(int)
    for (row, col), colour in zip(
        [(2, 2), (2, 27), (17, 2), (17, 27)], images.QUADRANT_COLOURS, strict=True
    ):
        assert tuple(pixel[:, row, col]) == colour


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_prepare_pads_with_zeros_or_the_repeated_edges(dtype: str) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    spec = InputSpec(height=3, width=5, dtype=dtype)
    alone = prepare(Image.fromarray(pixels), spec)

    zeros = prepare(Image.fromarray(pixels), spec, shape=(4, 8))
    edges = prepare(Image.fromarray(pixels), spec, shape=(4, 8), edge=True)

    for x in (zeros, edges):
        assert x.shape == (3, 4, 8)
        assert x.dtype == alone.dtype
        np.testing.assert_array_equal(x[:, :3, :5], alone)
    assert not zeros[:, 3:].any()
    assert not zeros[:, :, 5:].any()
    np.testing.assert_array_equal(edges[:, :3, 5:], np.repeat(alone[:, :, 4:], 3, axis=2))
    np.testing.assert_array_equal(edges[:, 3], edges[:, 2])  # the corner: the last pixel


def test_multi_picture_jpeg_gives_the_first_picture_and_drafts() -> None:
    first = images.quadrants(1600, 1200)
    second = first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    data = images.encode(first, "MPO", save_all=True, append_images=[second])

    decoded = decode(data, max_pixels=MAX_PIXELS, min_size=(256, 256))

    assert decoded.size == (1600, 1200)
    assert decoded.image.size == (400, 300)
    assert np.abs(_rgb(decoded.image) - _rgb(images.quadrants(400, 300))).mean() < 4
