"""What each input policy and scale buys: mIoU, per-object recall by radius band and ms per image
for Shapes models, on the held-out multi-scale split and on the second generator's scenes.

    python -m bench.scales --data own --max-sides 320,448,512,640,800        # pick the scale here
    python -m bench.scales --data second --max-sides 640 \\
        --stretch models/shapes-fcn/1/model.onnx --json bench/results/scales/second.json
    python -m bench.scales --data second --max-sides 640 --record            # into the card

Needs the training install (it scores with ``model_export``) and a repository checkout (the
second generator is ``tests/scenes.py``). ``native`` is run as the service's ``native`` policy
runs it (``model_export.evaluate.native_labels``: long side scaled down to at most max_side,
padded to the stride, cropped, nearest-resized back); ``stretch`` through the service's own
``prepare`` at the card's input size. The ms are the whole per-image path (normalise, run, argmax,
resize back; not JPEG decode), median over the scenes, one ONNX Runtime intra-op thread unless
``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.procstat import load_average
from bench.server import LATEST_MODEL
from model_export.card import card_of_file, write_card
from model_export.datasets import MultiscaleShapesDataset
from model_export.evaluate import native_labels, onnx_predictor, onnx_session
from model_export.metrics import ConfusionMatrix, ObjectRecall
from model_export.shapes import SHAPE_CLASSES
from service.imaging import prepare
from service.masks import resize_labels
from tests.scenes import draw_scene

SECOND_SEED = 1  # the second generator's stream for evaluation; no model ever trains on it

# (image, mask, instances, classes of objects 1..n, radii of objects 1..n)
Truth = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Labeller = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (H, W) uint8 labels


@dataclass(frozen=True)
class Row:
    data: str
    model: str
    policy: str
    max_side: int | None
    images: int
    miou: float
    per_class_iou: dict[str, float]
    recall: dict[str, float | None]
    objects: dict[str, int]
    ms_median: float

    def markdown(self) -> str:
        recall = " | ".join("—" if r is None else f"{r:.3f}" for r in self.recall.values())
        side = "" if self.max_side is None else f" {self.max_side}"
        return (
            f"| {self.model} | {self.policy}{side} | {self.miou:.4f} | {recall} | "
            f"{self.ms_median:.1f} |"
        )


def own_scenes(count: int) -> Iterator[Truth]:
    """The multi-scale generator's held-out test split (seed 0), first ``count`` scenes."""
    data = MultiscaleShapesDataset("test", length=count)
    for i in range(count):
        scene = data.scene(i)
        n = len(scene.radii)
        classes = np.zeros(n + 1, np.int64)
        classes[scene.instances.ravel()] = scene.mask.ravel()
        yield scene.image, scene.mask, scene.instances, classes[1:], np.asarray(scene.radii)


def second_scenes(count: int, width: int = 640, height: int = 480) -> Iterator[Truth]:
    for i in range(count):
        s = draw_scene(SECOND_SEED, i, width=width, height=height)
        yield s.image, s.mask, s.instances, np.asarray(s.classes), np.asarray(s.radii_px)


def labeller(model: Path, policy: str, max_side: int | None, threads: int) -> Labeller:
    card = card_of_file(model)
    predict = onnx_predictor(onnx_session(model, threads))
    if policy == "native":
        assert max_side is not None
        return lambda image: native_labels(predict, image, card.input, max_side)

    def stretch(image: np.ndarray) -> np.ndarray:
        labels = predict(prepare(Image.fromarray(image), card.input)[None])[0]
        return resize_labels(labels, (image.shape[1], image.shape[0]))

    return stretch


def score(data: str, model: Path, policy: str, max_side: int | None, scenes: list[Truth],
          threads: int) -> Row:  # fmt: skip
    label = labeller(model, policy, max_side, threads)
    label(scenes[0][0])  # warm-up: the first run plans the graph for this shape
    confusion, recall, times_ms = ConfusionMatrix(SHAPE_CLASSES), ObjectRecall(), []
    for image, mask, instances, classes, radii in scenes:
        started = time.perf_counter()
        predicted = label(image)
        times_ms.append((time.perf_counter() - started) * 1e3)
        confusion.update(predicted, mask)
        recall.update(predicted, instances, classes, radii)
    scores = confusion.scores()
    return Row(
        data, f"{model.parent.parent.name}:{model.parent.name}", policy, max_side, len(scenes),
        round(scores.miou, 4), {k: round(v, 4) for k, v in scores.per_class_iou.items()},
        {k: None if v is None else round(v, 4) for k, v in recall.recall().items()},
        recall.counts(), round(float(np.median(times_ms)), 2),
    )  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scales", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=LATEST_MODEL, help="run natively (%(default)s)")
    p.add_argument("--data", choices=("own", "second"), required=True)
    p.add_argument("--scenes", type=int, default=200, help="scenes to score (%(default)s)")
    p.add_argument("--max-sides", default="640", help="native long-side limits, comma-separated")
    p.add_argument("--stretch", type=Path, action="append", default=[],
                   help="also score this model stretched to its card's input size")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--record", action="store_true",
                   help="write the native rows into --model's card")  # fmt: skip
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[Row]:
    scenes = list((own_scenes if args.data == "own" else second_scenes)(args.scenes))
    rows = [score(args.data, m, "stretch", None, scenes, args.threads) for m in args.stretch]
    for side in (int(s) for s in args.max_sides.split(",")):
        rows.append(score(args.data, args.model, "native", side, scenes, args.threads))
    return rows


def record(model: Path, rows: list[Row]) -> None:
    """Add the native rows to the card's ``training.evaluation`` under their data's name."""
    card = card_of_file(model)
    assert card.training is not None
    evaluation = dict((card.training.model_extra or {}).get("evaluation", {}))
    for row in rows:
        if row.policy == "native":
            evaluation[f"{row.data}/native-{row.max_side}"] = asdict(row)
    training = card.training.model_copy(update={"evaluation": evaluation})
    write_card(model, card.model_copy(update={"training": training}))


def render(rows: list[Row]) -> str:
    bands = " | ".join(f"recall r {b} px" for b in rows[0].recall)
    head = f"| model | policy | mIoU | {bands} | ms/image |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    lines += [r.markdown() for r in rows]
    counts = ", ".join(f"{b}: {n}" for b, n in rows[0].objects.items())
    return "\n".join(lines) + f"\n({rows[0].images} scenes; objects per band {counts})"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows = run(args)
    print(f"load average {load_average()}")
    print(render(rows))
    for row in rows:
        print(f"{row.model} {row.policy} {row.max_side}: {row.per_class_iou}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if args.record:
        record(args.model, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
