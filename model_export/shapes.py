"""Synthetic *Shapes* scenes: a segmentation task that needs no download yet is not trivial.

Every scene is a pure function of ``(seed, index)``: the same pair always renders the same image
and mask, on any machine. Objects get random colours and textures (so colour alone never tells the
class: the shape does), rotate, overlap (painter's order decides the mask), and the whole scene is
colour-jittered, blurred and noised.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPE_CLASSES = ("background", "circle", "square", "triangle", "star")

_MAX_OCCLUSION = 0.3  # a new object may hide at most this fraction of an earlier one
_MIN_COLOUR_CONTRAST = 90  # L1 distance (0..765) between an object's colour and earlier ones


def render_scene(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of stream ``seed``: (H, W, 3) uint8 RGB image and (H, W) uint8 class mask."""
    rng = np.random.default_rng([seed, index])
    background_colour = _random_colour(rng)
    image = _texture(rng, size, background_colour, _random_colour(rng))
    mask = np.zeros((size, size), dtype=np.uint8)
    instances = np.zeros((size, size), dtype=np.uint8)  # which object each pixel shows, 0 = none
    used = [background_colour]
    for instance in range(1, int(rng.integers(1, 5)) + 1):
        cls = int(rng.integers(1, len(SHAPE_CLASSES)))
        region = _shape_region(rng, cls, size)
        if not _keeps_earlier_objects_visible(instances, region):
            continue
        colour = _contrasting_colour(rng, used)
        used.append(colour)
        texture = _texture(rng, size, colour, _random_colour(rng))
        image[region] = texture[region]
        mask[region] = cls
        instances[region] = instance
    return degrade(rng, image), mask


def _keeps_earlier_objects_visible(instances: np.ndarray, region: np.ndarray) -> bool:
    """Overlaps are allowed, but an object hidden beyond recognition has no defined shape."""
    visible = np.bincount(instances.ravel(), minlength=256)
    covered = np.bincount(instances[region], minlength=256)
    earlier = visible[1:] > 0
    return bool(np.all(covered[1:][earlier] <= _MAX_OCCLUSION * visible[1:][earlier]))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    # Rejection sampling keeps every object visible against the background and the other objects.
    while True:
        colour = _random_colour(rng)
        if all(np.abs(colour - other).sum() >= _MIN_COLOUR_CONTRAST for other in avoid):
            return colour


def _texture(rng: np.random.Generator, size: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """A (size, size, 3) float image: solid, stripes, checkerboard or smooth noise, mostly c1."""
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        weight = np.zeros((size, size), np.float32)
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4, 16)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        weight = 0.5 + 0.5 * np.sin(phase)
    elif kind == 2:
        cell = int(rng.integers(3, 12))
        weight = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        coarse = rng.random((size // 8 + 2, size // 8 + 2)).astype(np.float32)
        smooth = Image.fromarray(coarse).resize((size + 16, size + 16), Image.Resampling.BICUBIC)
        weight = np.clip(np.asarray(smooth)[:size, :size], 0, 1)
    weight *= rng.uniform(0.15, 0.4)  # the second colour only tints: c1 stays dominant
    return c1 * (1 - weight[..., None]) + c2 * weight[..., None]


def _shape_region(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Boolean (size, size) region of one shape of class ``cls``, randomly placed and rotated."""
    radius = rng.uniform(0.13, 0.26) * size
    cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    return shape_mask(SHAPE_CLASSES[cls], (size, size), (cx, cy), radius, angle)


def shape_mask(
    label: str,
    size: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    angle: float,
    star_inner: float = 0.45,
) -> np.ndarray:
    """Boolean (H, W) region of one shape drawn on a ``size`` (W, H) canvas."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre
    if label == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
    else:
        draw.polygon(polygon(label, cx, cy, radius, angle, star_inner), fill=1)
    return np.asarray(canvas, dtype=bool)


def polygon(
    label: str, cx: float, cy: float, radius: float, angle: float, star_inner: float = 0.45
) -> list[tuple[float, float]]:
    """The corners of a square, triangle or star (inner radius ``star_inner`` x ``radius``)."""
    if label == "square":
        radii, corners = [radius * 0.85], 4
    elif label == "triangle":
        radii, corners = [radius * 1.1], 3
    else:  # star: alternate outer and inner radius
        radii, corners = [radius * 1.1, radius * star_inner], 5
    steps = corners * len(radii)
    return [
        (
            cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / steps),
            cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / steps),
        )
        for i in range(steps)
    ]


def degrade(
    rng: np.random.Generator,
    image: np.ndarray,
    *,
    max_blur_px: float = 1.2,
    max_noise: float = 10.0,
) -> np.ndarray:
    """Colour jitter, blur (radius up to ``max_blur_px``) and sensor noise (sigma up to
    ``max_noise``) over the whole scene."""
    gain = rng.uniform(0.75, 1.25, size=3)
    offset = rng.uniform(-20, 20)
    image = np.clip(image * gain + offset, 0, 255)
    blurred = Image.fromarray(image.astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius=float(rng.uniform(0, max_blur_px)))
    )
    noise = rng.normal(0, rng.uniform(0, max_noise), image.shape)
    return np.clip(np.asarray(blurred, np.float32) + noise, 0, 255).astype(np.uint8)
