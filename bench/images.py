"""Photo-like test JPEGs made by the bench itself, so every run uses the same realistic inputs.

A flat synthetic image compresses to a few kilobytes and decodes faster than any photo; these
have smooth low-frequency shading, a few hard-edged shapes and sensor-like noise, which gives
JPEG sizes close to real photos (~100 KB at 640×480, a few MB at 4000×3000) and so realistic
decode and upload costs. Deterministic from the seed; cached on disk.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CACHE = Path(__file__).resolve().parent / "results" / "tmp" / "images"
SIZES = {"small": (640, 480), "large": (4000, 3000)}


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Low-frequency shading: a coarse random colour grid upsampled bicubically.
    coarse = rng.integers(30, 226, size=(6, 8, 3), dtype=np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    scale = min(width, height)
    for _ in range(12):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(scale // 20, scale // 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            points = [
                (int(x + r * np.cos(a)), int(y + r * np.sin(a)))
                for a in np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            ]
            draw.polygon(points, fill=colour)
    # Soften edges a little (lens blur), then add sensor noise.
    base = base.filter(ImageFilter.GaussianBlur(radius=max(1, scale // 600)))
    pixels = np.asarray(base, dtype=np.int16)
    noise = rng.normal(0.0, 6.0, size=pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def jpeg_bytes(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    photo_like(width, height, seed).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_jpeg(kind: str = "small", seed: int = 0) -> bytes:
    """The cached JPEG for ``kind`` ("small" = 640×480, "large" = 4000×3000), made on first use."""
    width, height = SIZES[kind]
    path = CACHE / f"{kind}-{width}x{height}-seed{seed}.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(jpeg_bytes(width, height, seed))
        tmp.replace(path)
    return path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the bench's test JPEGs and print sizes.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for kind, (w, h) in SIZES.items():
        data = sample_jpeg(kind, args.seed)
        print(f"{kind}: {w}x{h} JPEG, {len(data) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
