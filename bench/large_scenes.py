"""mIoU of large images under each input policy, through the service's own pipeline.

    python -m bench.large_scenes --scenes 6         # 4000x3000 scenes, ~6 minutes on 2 cores

Scenes come from the second, independent generator (``tests/scenes.py``; 8-30 objects of radius
30-150 px, JPEG q85, never trained on). Each is sent as its JPEG bytes to
``service.pipeline.label_image`` on an in-process core serving the model (``bench.offline``'s
``started``), once per policy, and the labels scaled to the image are scored against the mask.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from pathlib import Path

from PIL import Image

from bench.offline import started
from bench.procstat import load_average
from bench.server import LATEST_MODEL, ROOT
from model_export.metrics import ConfusionMatrix
from service import masks, pipeline
from service.pipeline import OutputFormat
from service.policies import PolicyRequest
from service.settings import Settings
from tests.scenes import CLASSES, draw_scene

SECOND_SEED = 1  # the second generator's evaluation stream (bench.scales uses it too)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=LATEST_MODEL)
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--tile", type=int, help="tiles: window side (default: the card's)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/scales/large.json")
    return parser.parse_args(argv)


def policies(tile: int | None) -> dict[str, PolicyRequest]:
    windows = f"{tile} px" if tile else "the card's"
    return {
        "stretch": PolicyRequest(resize="stretch"),
        "native (card's max_side)": PolicyRequest(resize="native"),
        f"tiles ({windows} windows)": PolicyRequest(resize="tiles", tile=tile),
    }


async def measure(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    service, served = await started(args.model, Settings())
    confusions = {name: ConfusionMatrix(CLASSES) for name in policies(args.tile)}
    seconds = dict.fromkeys(confusions, 0.0)
    try:
        for index in range(args.scenes):
            scene = draw_scene(SECOND_SEED, index, width=4000, height=3000,
                               radius_px=(30, 150), objects=(8, 30))  # fmt: skip
            data = _jpeg(scene.image)
            for name, policy in policies(args.tile).items():
                t0 = time.perf_counter()
                labelled = await pipeline.label_image(
                    service, served, data, OutputFormat.png, policy=policy,
                    deadline=time.monotonic() + 600,
                )  # fmt: skip
                seconds[name] += time.perf_counter() - t0
                labels = masks.resize_labels(labelled.labels, labelled.decoded.size)
                confusions[name].update(labels, scene.mask)
    finally:
        await service.close()
    return {
        name: {
            "miou": round(confusion.scores().miou, 4),
            "per_class_iou": {k: round(v, 4) for k, v in confusion.scores().per_class_iou.items()},
            "s_per_image": round(seconds[name] / args.scenes, 3),
        }
        for name, confusion in confusions.items()
    }


def _jpeg(pixels: object) -> bytes:
    """The scene as the generator delivers it (it has been through JPEG q85 already)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)  # type: ignore[arg-type]
    return buffer.getvalue()


def render(args: argparse.Namespace, rows: dict[str, dict[str, object]]) -> None:
    print(f"| policy ({args.model.parent.parent.name}:{args.model.parent.name}, {args.scenes} "
          "scenes 4000x3000) | mIoU | s / image |\n|---|---|---|")  # fmt: skip
    for name, row in rows.items():
        print(f"| {name} | {row['miou']:.4f} | {row['s_per_image']:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": str(args.model), "scenes": args.scenes, "tile": args.tile, "rows": rows}
    args.json.write_text(json.dumps(result | {"load_average": str(load_average())}, indent=2))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    render(args, asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
