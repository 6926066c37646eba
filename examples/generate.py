"""Sample images for trying the service, and the README's picture of what it returns.

    python examples/generate.py [--model models/shapes-fcn/1/model.onnx]

writes examples/shapes*.{jpg,png} (scenes from the held-out Shapes test split, rendered at
128 to 384 px: the service resizes them to the model's input) and docs/images/example.png
(input | mask | overlay, computed with the service's own preprocessing and mask encoding).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model_export.card import card_of_file
from model_export.datasets import ShapesDataset
from model_export.evaluate import onnx_predictor, onnx_session
from service.imaging import prepare
from service.masks import encode_overlay, resize_labels
from service.model_card import ModelCard

ROOT = Path(__file__).resolve().parent.parent
# (file, side): test scenes 0..3. Mostly JPEG, as clients send; one lossless PNG at the model's
# own input size; shapes.jpg is the one the README's examples post.
PANEL = 256  # side of each picture panel, whatever the example's size
EXAMPLES = (
    ("shapes.jpg", 256),
    ("shapes-1.png", 128),
    ("shapes-2.jpg", 256),
    ("shapes-3.jpg", 384),
)


def write_examples(out: Path) -> list[Path]:
    paths = []
    for i, (name, size) in enumerate(EXAMPLES):
        image = Image.fromarray(ShapesDataset("test", length=i + 1, size=size)[i][0])
        path = out / name
        image.save(path, quality=90)
        paths.append(path)
    return paths


def segment(model: Path, image: Image.Image) -> tuple[np.ndarray, ModelCard]:
    card = card_of_file(model)
    predict = onnx_predictor(onnx_session(model))
    labels = predict(prepare(image, card.input)[None])[0]
    return resize_labels(labels, image.size), card


def picture(model: Path, images: list[Path]) -> Image.Image:
    """One row per image: input | mask | overlay, and a colour legend underneath."""
    rows = []
    card: ModelCard | None = None
    for path in images:
        image = Image.open(path).convert("RGB")
        labels, card = segment(model, image)
        palette = np.array(card.palette(), dtype=np.uint8)
        mask = Image.fromarray(palette[labels])
        overlay = Image.open(io.BytesIO(encode_overlay(image, labels, card.palette(), 0.6)))
        panels = [
            im.resize((PANEL, PANEL), Image.Resampling.NEAREST) for im in (image, mask, overlay)
        ]
        rows.append(np.concatenate([np.asarray(p.convert("RGB")) for p in panels], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    assert card is not None
    legend = Image.new("RGB", (grid.width, 24), "white")
    draw = ImageDraw.Draw(legend)
    x = 8
    for info in card.classes:
        draw.rectangle((x, 6, x + 12, 18), fill=tuple(info.color), outline="black")
        draw.text((x + 16, 6), info.label, fill="black")
        x += 24 + 7 * len(info.label)
    out = Image.new("RGB", (grid.width, grid.height + legend.height), "white")
    out.paste(grid, (0, 0))
    out.paste(legend, (0, grid.height))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/shapes-fcn/1/model.onnx")
    args = parser.parse_args()
    images = write_examples(ROOT / "examples")
    target = ROOT / "docs/images/example.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    picture(args.model, images[:3]).save(target, optimize=True)
    print("wrote", *(str(p.relative_to(ROOT)) for p in [*images, target]))


if __name__ == "__main__":
    main()
