"""Test images in every accepted format, and hostile ones (bombs, truncated, corrupt) as bytes.

``quadrants`` draws an image whose four quadrants have distinct, saturated colours, so a test can
check both the colours and their placement (orientation) even through lossy JPEG compression.
``scene`` draws a red and a green blob whose mask ``tests.support.expected_mask`` predicts exactly.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 240)
QUADRANT_COLOURS = (RED, GREEN, BLUE, WHITE)  # top-left, top-right, bottom-left, bottom-right
_SCENE_RED, _SCENE_GREEN = (230, 10, 10), (10, 220, 10)


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    pixels[:h2, :w2], pixels[:h2, w2:] = RED, GREEN
    pixels[h2:, :w2], pixels[h2:, w2:] = BLUE, WHITE
    return Image.fromarray(pixels)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """``encode``, PNG unless told: the body most HTTP tests send."""
    return encode(image, fmt, **params)


def scene(seed: int, width: int = 80, height: int = 60) -> Image.Image:
    """A red blob in the left part and a green one in the right part, on black or white.

    Red and green never touch (a gap of a quarter of the width), so resizing cannot blend them
    into a colour where the tiny model's two classes tie: the expected mask is exact.
    """
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255 if seed % 2 else 0, dtype=np.uint8)
    third = width // 3

    def blob(x0: int, x1: int, colour: tuple[int, int, int]) -> None:
        left = int(rng.integers(x0, x0 + (x1 - x0) // 2))
        right = int(rng.integers(left + 4, x1 + 1))
        top = int(rng.integers(0, height // 2))
        bottom = int(rng.integers(top + 4, height + 1))
        pixels[top:bottom, left:right] = colour

    blob(0, third, _SCENE_RED)
    blob(width - third, width, _SCENE_GREEN)
    return Image.fromarray(pixels)


def with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """``image`` stored as-is with EXIF Orientation = ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params["quality"] = 95
    return encode(image, fmt, **params)


def animated_gif(colours: list[tuple[int, int, int]], size: tuple[int, int] = (32, 24)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) declaring width x height RGB, with a tiny IDAT:
    decoding it would need width * height * 3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to declare width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: marker, length(2), precision(1), height, width
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def corrupt_png_crc(data: bytes) -> bytes:
    """``data`` (a PNG) with the CRC of its IHDR chunk flipped."""
    broken = bytearray(data)
    crc_at = 8 + 4 + 4 + 13  # signature, length, type, IHDR payload
    broken[crc_at] ^= 0xFF
    return bytes(broken)


def png_with_short_ihdr() -> bytes:
    """A PNG whose IHDR chunk (valid CRC) holds 4 bytes instead of 13."""
    ihdr = struct.pack(">I", 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def tiff_with_tag_type(tag: int, field_type: int) -> bytes:
    """A small little-endian TIFF whose IFD entry for ``tag`` claims another field type."""
    data = bytearray(encode(quadrants(24, 16), "TIFF"))
    assert data[:2] == b"II", "Pillow writes little-endian TIFF"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == tag:
            struct.pack_into("<H", data, at + 2, field_type)
            return bytes(data)
    raise ValueError(f"no tag {tag} in the TIFF")
