"""A second Shapes generator, written apart from ``model_export``'s, to judge models on scenes
they were not trained to: circles, squares, triangles and stars (class ids 1-4, background 0).

Nothing here is shared with ``model_export/shapes*.py``: shapes are rasterised with NumPy
(signed distance for discs, even-odd crossing tests for polygons) on a 4x4 supersampling grid, so
edges are anti-aliased and the mask is the majority of each pixel's samples; colours are drawn in
HSV; textures (gradients, polka dots, rings, bilinear value noise) and the blur are NumPy; the
image is JPEG-encoded at quality 85 and decoded, as a phone or browser would send it. The
"radius" of an object is its circumradius (vertex distance for polygons, outer points for stars).

    scene = draw_scene(seed=1, index=0)                # 640x480, 1-5 objects of radius 10-150
    big = draw_scene(1, 0, width=4000, height=3000, radius_px=(30, 150), objects=(8, 30))

Never train on these scenes: they exist to measure generalisation.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLASSES = ("background", "circle", "square", "triangle", "star")
JPEG_QUALITY = 85
_SUPERSAMPLE = 4
_MAX_HIDDEN = 0.25  # a new object may cover at most this share of an earlier one's pixels
_MIN_CONTRAST = 70.0  # Euclidean RGB distance between an object's colour and the background's
_PLACEMENT_TRIES = 25


@dataclass(frozen=True)
class DrawnScene:
    """image (H, W, 3) uint8; mask (H, W) uint8 class ids; instances (H, W) int32 object numbers
    (0 = background); classes[k - 1], radii_px[k - 1] = class id and radius of object k."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    classes: tuple[int, ...]
    radii_px: tuple[float, ...]


def draw_scene(
    seed: int,
    index: int,
    *,
    width: int = 640,
    height: int = 480,
    radius_px: tuple[float, float] = (10.0, 150.0),
    objects: tuple[int, int] = (1, 5),
) -> DrawnScene:
    """Scene ``index`` of stream ``seed``: the same arguments always give the same scene."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, 0xB0B])))
    canvas = _surface(rng, height, width, _hsv_colour(rng))
    background_rgb = canvas.reshape(-1, 3).mean(0)
    mask = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.int32)
    classes: list[int] = []
    radii: list[float] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        placed = _place(rng, instances, width, height, radius_px)
        if placed is None:
            continue
        cls, radius, top, left, cover = placed
        colour = _contrasting(rng, background_rgb)
        h, w = cover.shape
        paint = _surface(rng, h, w, colour)
        window = canvas[top : top + h, left : left + w]
        window[:] = window * (1 - cover[..., None]) + paint * cover[..., None]
        inside = cover >= 0.5
        mask[top : top + h, left : left + w][inside] = cls
        instances[top : top + h, left : left + w][inside] = len(classes) + 1
        classes.append(cls)
        radii.append(radius)
    image = _jpeg(_blur_and_noise(rng, canvas))
    return DrawnScene(image, mask, instances, tuple(classes), tuple(radii))


def _place(
    rng: np.random.Generator,
    instances: np.ndarray,
    width: int,
    height: int,
    radius_px: tuple[float, float],
) -> tuple[int, float, int, int, np.ndarray] | None:
    """A shape that hides no earlier object beyond ``_MAX_HIDDEN``: (class, radius, top, left,
    coverage in [0, 1] over its clipped bounding box); None when no try succeeded."""
    for _ in range(_PLACEMENT_TRIES):
        cls = int(rng.integers(1, len(CLASSES)))
        radius = float(np.exp(rng.uniform(np.log(radius_px[0]), np.log(radius_px[1]))))
        cx = rng.uniform(0.4 * radius, width - 0.4 * radius)
        cy = rng.uniform(0.4 * radius, height - 0.4 * radius)
        top, left = max(0, int(cy - radius) - 1), max(0, int(cx - radius) - 1)
        bottom, right = min(height, int(cy + radius) + 2), min(width, int(cx + radius) + 2)
        cover = _coverage(rng, cls, radius, cx - left, cy - top, bottom - top, right - left)
        below = instances[top:bottom, left:right]
        if _hides_too_much(instances, below, cover >= 0.5) or not (cover >= 0.5).any():
            continue
        return cls, radius, top, left, cover
    return None


def _hides_too_much(instances: np.ndarray, below: np.ndarray, inside: np.ndarray) -> bool:
    hidden = np.bincount(below[inside].ravel(), minlength=instances.max() + 1)[1:]
    if not hidden.any():
        return False
    visible = np.bincount(instances.ravel(), minlength=instances.max() + 1)[1:]
    return bool((hidden > _MAX_HIDDEN * np.maximum(visible, 1)).any())


def _coverage(
    rng: np.random.Generator, cls: int, radius: float, cx: float, cy: float, h: int, w: int
) -> np.ndarray:
    """(h, w) share of each pixel's 4x4 sub-samples inside the shape centred at (cx, cy)."""
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    ys = (np.arange(h)[:, None] + offsets[None, :]).ravel()
    xs = (np.arange(w)[:, None] + offsets[None, :]).ravel()
    py, px = np.meshgrid(ys - cy, xs - cx, indexing="ij")
    spin = rng.uniform(0, 2 * np.pi)
    if CLASSES[cls] == "circle":
        inside = np.hypot(px, py) <= radius
    else:
        inside = _in_polygon(px, py, _vertices(rng, CLASSES[cls], radius, spin))
    return inside.reshape(h, _SUPERSAMPLE, w, _SUPERSAMPLE).mean(axis=(1, 3))


def _vertices(rng: np.random.Generator, label: str, radius: float, spin: float) -> np.ndarray:
    if label == "star":
        k = rng.uniform(0.38, 0.5)  # inner / outer radius
        r = np.tile([radius, k * radius], 5)
        t = spin + np.arange(10) * np.pi / 5
    else:
        n = {"square": 4, "triangle": 3}[label]
        r = np.full(n, radius)
        t = spin + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _in_polygon(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to +x crosses the boundary an odd number of
    times."""
    inside = np.zeros(px.shape, bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        straddles = (y0 > py) != (y1 > py)
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0 if y1 != y0 else 1e-12)
        inside ^= straddles & (px < x_cross)
    return inside


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.2, 1.0))
    return np.array([r, g, b]) * 255.0


def _contrasting(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    while True:
        colour = _hsv_colour(rng)
        if np.linalg.norm(colour - background) >= _MIN_CONTRAST:
            return colour


def _surface(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32: ``colour`` modulated by a flat, gradient, dots, rings or noise pattern
    towards a second colour, by 5-35 %."""
    other = _hsv_colour(rng)
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    pattern = ("flat", "gradient", "dots", "rings", "noise")[int(rng.integers(0, 5))]
    if pattern == "flat":
        t = np.zeros((h, w), np.float32)
    elif pattern == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        ramp = x * np.float32(np.cos(a)) + y * np.float32(np.sin(a))
        t = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    elif pattern == "dots":
        pitch = np.float32(rng.uniform(5, 30))
        dx, dy = (x % pitch) - pitch / 2, (y % pitch) - pitch / 2
        t = (np.hypot(dx, dy) < pitch * rng.uniform(0.15, 0.4)).astype(np.float32)
    elif pattern == "rings":
        ox, oy, period = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 40)
        t = 0.5 + 0.5 * np.cos(
            np.hypot(x - np.float32(ox), y - np.float32(oy)) * (2 * np.pi / period)
        )
    else:
        t = _value_noise(rng, h, w, cell=rng.uniform(10, 60))
    t = (t * rng.uniform(0.05, 0.35)).astype(np.float32)[..., None]
    return (colour.astype(np.float32) * (1 - t) + other.astype(np.float32) * t).astype(np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    gy, gx = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
    fy = (gy - y0).astype(np.float32)[:, None]
    fx = (gx - x0).astype(np.float32)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _blur_and_noise(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """A separable Gaussian blur (sigma 0-1.5 px, 7 taps) and Gaussian noise (sigma 0-8)."""
    sigma = rng.uniform(0, 1.5)
    if sigma > 0.3:
        taps = np.arange(-3, 4)
        kernel = np.exp(-(taps**2) / (2 * sigma**2)).astype(np.float32)
        kernel /= kernel.sum()
        for axis in (0, 1):
            padded = np.pad(canvas, [(3, 3) if a == axis else (0, 0) for a in range(3)], "edge")
            n = canvas.shape[axis]
            blurred = np.zeros_like(canvas)
            for i, k in enumerate(kernel):
                window = [slice(None)] * 3
                window[axis] = slice(i, i + n)
                blurred += k * padded[tuple(window)]
            canvas = blurred
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0, 8))
    return np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))
