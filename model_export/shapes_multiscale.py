"""Multi-scale Shapes scenes: the Shapes classes at every size, in frames of any aspect ratio.

Scene ``index`` of stream ``seed`` is a pure function of the pair (NumPy's
``default_rng(["multiscale", seed, index])`` draws everything, and JPEG encoding is
deterministic), so the fixed-size scenes of ``shapes.py`` keep their pixels. Against those:

* the frame is 160-480 px on its short side, landscape or portrait, aspect ratio up to 2:1;
* objects (1-8) have a radius drawn log-uniformly from 4 px to 60 % of the short side, so every
  octave from an 8 px object to one that fills the frame is equally common;
* textures (stripes, checks, smooth noise, linear gradients) have periods from 3 to 48 px;
* the whole scene is colour-jittered, blurred (radius 0-2 px), noised (sigma 0-12) and, four times
  in five, JPEG re-encoded at a quality drawn from 30-95.

``render_multiscale`` also returns each object's instance map and radius, for per-object recall.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_export.shapes import (
    SHAPE_CLASSES,
    _contrasting_colour,
    _keeps_earlier_objects_visible,
    _random_colour,
    degrade,
    shape_mask,
)

MIN_SHORT_SIDE, MAX_SHORT_SIDE = 160, 480
MAX_ASPECT = 2.0
MIN_RADIUS_PX = 4.0
MAX_RADIUS_FRACTION = 0.6  # of the short side
MAX_OBJECTS = 8
JPEG_QUALITY = (30, 95)
_JPEG_PROBABILITY = 0.8


@dataclass(frozen=True)
class Scene:
    """image (H, W, 3) uint8 RGB; mask (H, W) uint8 class ids; instances (H, W) uint8 object
    numbers (0 = background); radii[k - 1] = radius in pixels of object k (0 if it was dropped)."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    radii: tuple[float, ...]


def render_multiscale(seed: int, index: int) -> Scene:
    """Multi-scale scene ``index`` of stream ``seed``."""
    rng = np.random.default_rng([0x5CA1E, seed, index])
    height, width = _frame(rng)
    background = _random_colour(rng)
    image = _texture(rng, height, width, background, _random_colour(rng))
    mask = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint8)
    used, radii = [background], []
    for instance in range(1, int(rng.integers(1, MAX_OBJECTS + 1)) + 1):
        cls = int(rng.integers(1, len(SHAPE_CLASSES)))
        radius, region = _shape_region(rng, cls, height, width)
        if not region.any() or not _keeps_earlier_objects_visible(instances, region):
            radii.append(0.0)
            continue
        colour = _contrasting_colour(rng, used)
        used.append(colour)
        top, left, bottom, right = _bounds(region)
        box = np.s_[top:bottom, left:right]
        texture = _texture(rng, bottom - top, right - left, colour, _random_colour(rng))
        image[box][region[box]] = texture[region[box]]
        mask[region] = cls
        instances[region] = instance
        radii.append(radius)
    return Scene(_degrade(rng, image), mask, instances, tuple(radii))


def _frame(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(MIN_SHORT_SIDE, MAX_SHORT_SIDE + 1))
    long = min(round(short * math.exp(rng.uniform(0, math.log(MAX_ASPECT)))), 640)
    return (short, long) if rng.random() < 0.7 else (long, short)  # mostly landscape


def _bounds(region: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _shape_region(
    rng: np.random.Generator, cls: int, height: int, width: int
) -> tuple[float, np.ndarray]:
    """(radius, boolean (H, W) region) of one shape, placed with its centre in the frame."""
    top = math.log(MAX_RADIUS_FRACTION * min(height, width))
    radius = math.exp(rng.uniform(math.log(MIN_RADIUS_PX), top))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, 2 * math.pi)
    label = SHAPE_CLASSES[cls]
    # A star's inner radius varies a little, so no one ratio defines the class.
    inner = 1.1 * rng.uniform(0.36, 0.5) if label == "star" else 0.45
    return radius, shape_mask(label, (width, height), (cx, cy), radius, angle, inner)


def _texture(
    rng: np.random.Generator, height: int, width: int, c1: np.ndarray, c2: np.ndarray
) -> np.ndarray:
    """An (H, W, 3) float image, mostly c1: solid, stripes, checks, smooth noise or a gradient."""
    kind = int(rng.integers(0, 5))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:
        weight = np.zeros((height, width), np.float32)
    elif kind == 1:
        angle, period = rng.uniform(0, math.pi), math.exp(rng.uniform(math.log(3), math.log(48)))
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        weight = 0.5 + 0.5 * np.sin(phase)
    elif kind == 2:
        cell = int(rng.integers(3, 32))
        weight = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == 3:
        cell = int(rng.integers(8, 49))
        coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
        size = (coarse.shape[1] * cell, coarse.shape[0] * cell)
        smooth = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        weight = np.clip(np.asarray(smooth)[:height, :width], 0, 1)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        weight = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    weight = weight * rng.uniform(0.15, 0.45)  # the second colour only tints: c1 stays dominant
    return c1 * (1 - weight[..., None]) + c2 * weight[..., None]


def _degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Colour jitter, blur, sensor noise (stronger than the fixed-size scenes') and, mostly, a
    JPEG round trip."""
    pixels = degrade(rng, image, max_blur_px=2.0, max_noise=12.0)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    if rng.random() >= _JPEG_PROBABILITY:
        return pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))
