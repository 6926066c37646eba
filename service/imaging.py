"""The pixel input end: request bytes -> oriented RGB image -> the model's input tensor.

``decode`` refuses oversized images from the header alone (before any pixel is decoded), applies
the EXIF orientation, decodes large JPEGs at a reduced DCT scale when the model needs far fewer
pixels, and normalises every pixel format to 8-bit RGB. ``prepare`` resizes and normalises
(a model with a uint8 input gets the resized pixels as they are).
Every function here is pure and thread-safe: the service calls them from worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, JpegImagePlugin

from service import model_card
from service.errors import InvalidImage, PayloadTooLarge

# Formats a client may send; Pillow's other readers (EPS, PSD, ICO, ...) are never tried.
# MPO (multi-picture JPEG from cameras) is opened through the JPEG reader.
FORMATS: Final = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

_MAGIC: Final = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),  # BigTIFF
    (b"MM\x00+", "image/tiff"),
    (b"BM", "image/bmp"),
)

_EXIF_ORIENTATION: Final = 0x0112
# EXIF orientation -> the transpose that shows the image upright (the EXIF 2.32 table).
_UPRIGHT: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset({5, 6, 7, 8})

# Load every format plugin now, once: Image.open would otherwise register them lazily, mutating
# Pillow's global registry from whichever worker thread gets there first.
Image.init()


# The size a caller needs, fixed or as a function of the upright image's (width, height).
MinSize = tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]] | None


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Image.Image  # RGB; smaller than ``size`` when decoded at a reduced JPEG scale
    size: tuple[int, int]  # (width, height) as displayed, after EXIF orientation: the mask's size


def sniff_media_type(data: bytes) -> str | None:
    """The image media type announced by ``data``'s magic bytes, or None when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    return None


def decode(data: bytes, *, max_pixels: int, min_size: MinSize = None) -> DecodedImage:
    """Decode ``data`` into an upright RGB image.

    ``min_size`` (width, height) is the smallest image the caller needs (the model input), or a
    function of the upright image's size that says it; a JPEG is then decoded at the largest
    1/2, 1/4 or 1/8 scale that still covers it, which is several times faster than a full
    decode. None decodes at full resolution.

    Raises PayloadTooLarge when width x height exceeds ``max_pixels`` (read from the header, so a
    decompression bomb is refused without allocating it) and InvalidImage for anything that is
    not a complete image in a supported format.
    """
    if not data:
        raise InvalidImage("the request body is empty")
    try:
        return _decode(data, max_pixels, min_size)
    except (InvalidImage, PayloadTooLarge):
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own header guard, 2 x MAX_IMAGE_PIXELS
        raise PayloadTooLarge(f"the image exceeds the limit of {max_pixels} pixels") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidImage(f"the body is not a {', '.join(FORMATS)} image") from exc
    except Exception as exc:
        # Pillow's readers report malformed input with whatever the failing step raised (OSError,
        # SyntaxError, ValueError, struct.error, EOFError, IndexError, ...): all mean the same.
        raise InvalidImage(f"the body is not a decodable image: {_reason(exc)}") from exc


def _decode(data: bytes, max_pixels: int, min_size: MinSize) -> DecodedImage:
    image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    orientation = _orientation(image)
    swapped = orientation in _SWAPS_AXES
    if callable(min_size):
        min_size = min_size((height, width) if swapped else (width, height))
    if min_size is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
        need_w, need_h = (min_size[1], min_size[0]) if swapped else min_size
        image.draft(image.mode, (max(1, need_w), max(1, need_h)))
    image.load()  # raises on truncated or corrupt data (LOAD_TRUNCATED_IMAGES stays False)
    if orientation != 1 and _orientation(image) != orientation:
        # The reader applied the orientation itself and dropped the tag (Pillow's TIFF reader
        # does, and then reports the upright size from the header on).
        orientation = 1
    display_size = (height, width) if orientation in _SWAPS_AXES else (width, height)

    rgb = _to_rgb(image)
    if orientation in _UPRIGHT:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    return DecodedImage(image=rgb, size=display_size)


def _orientation(image: Image.Image) -> int:
    # A JPEG's EXIF comes from its APP1 header; PNG, WebP and TIFF may read theirs while loading.
    value = image.getexif().get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _grey_to_rgb(_scale_to_bytes(np.asarray(image), mode))
    # RGBA, LA, P, L, 1, CMYK, YCbCr, LAB, ...: Pillow converts; alpha is dropped, not composited.
    return image.convert("RGB")


def _scale_to_bytes(grey: np.ndarray, mode: str) -> np.ndarray:
    """Wide grey samples -> uint8. Pillow's own conversions clip at 255, which turns a 16-bit
    image white and a 0..1 float image black; these keep the picture instead."""
    if mode == "F":  # float images are 0..1 by convention
        return np.rint(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)
    # 16-bit: keep the high byte, as Pillow does for 16-bit RGB PNGs. 32-bit "I" is how some
    # readers hand over 16-bit grey, so it is read as 16-bit too.
    return (np.clip(grey, 0, 0xFFFF).astype(np.uint16) >> 8).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.merge("RGB", [Image.fromarray(grey)] * 3)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text[:200] if text else type(exc).__name__


def prepare(
    image: Image.Image,
    spec: model_card.InputSpec,
    size: tuple[int, int] | None = None,
    shape: tuple[int, int] | None = None,
    *,
    edge: bool = False,
) -> np.ndarray:
    """``image`` resized (bilinear) to ``size`` (width, height; default the model's), normalised
    and placed top-left in a C-contiguous (3, *shape) array (height, width; default the resized
    image's) whose rest is zeros: the mean colour, after normalisation (see ``normalized`` for
    a uint8 input); with ``edge``, the image's last row and column repeated instead."""
    width, height = size or (spec.width, spec.height)
    pixels = np.asarray(resized(image, (width, height)))  # (H, W, 3) uint8
    return normalized(pixels, spec, shape or (height, width), edge=edge)


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` as RGB of ``size`` (width, height)."""
    if image.size != size:
        # reducing_gap: an image over 3x the input size is first box-reduced by an integer
        # factor. Twice as fast on big images; on a 4000x3000 photo -> 256x256 the result
        # differs from the plain resize by at most 2 levels (mean 0.1).
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return image if image.mode == "RGB" else image.convert("RGB")


def normalized(
    pixels: np.ndarray, spec: model_card.InputSpec, shape: tuple[int, int], *, edge: bool = False
) -> np.ndarray:
    """(h, w, 3) uint8 ``pixels`` normalised into the top-left of a (3, *shape) input whose rest
    is zeros, or with ``edge`` the pixels' last row and column repeated. A uint8 input (a graph
    that normalises its pixels itself) gets them as they are, and its zeros are black."""
    height, width = pixels.shape[:2]
    whole = (height, width) == shape
    fresh = np.empty if whole or edge else np.zeros
    if spec.dtype == "uint8":
        pixel_input = fresh((3, *shape), dtype=np.uint8)
        pixel_input[:, :height, :width] = pixels.transpose(2, 0, 1)
        if edge:
            _repeat_edges(pixel_input, height, width)
        return pixel_input
    out = fresh((3, *shape), dtype=np.float32)
    region = out if whole else out[:, :height, :width]
    scale, offset = _affine(spec)
    # x = (p / 255 - mean) / std = p * scale + offset, computed in place in the CHW output (the
    # transpose is only a view of the HWC pixels): one allocation, no temporaries.
    np.multiply(pixels.transpose(2, 0, 1), scale, out=region)
    region += offset
    if edge:
        _repeat_edges(out, height, width)
    return out if spec.dtype == "float32" else out.astype(spec.dtype)


def _repeat_edges(x: np.ndarray, height: int, width: int) -> None:
    """Fill (C, H, W) ``x`` beyond its top-left (height, width) with that part's last column,
    then its last row (so the corner gets the last pixel), in place."""
    x[:, :height, width:] = x[:, :height, width - 1 : width]
    x[:, height:, :] = x[:, height - 1 : height, :]


def _affine(spec: model_card.InputSpec) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1)
    offset = (-mean / std).astype(np.float32).reshape(3, 1, 1)
    return scale, offset
