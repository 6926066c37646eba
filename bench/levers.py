"""In-process before/after of the hot-path levers, each timed in isolation (best of N).

    python -m bench.levers                       # default model; ~1 minute on 2 cores
    python -m bench.levers --model M --json out.json

"after" is what segserve does (its own functions, imported); "before" is the usual alternative,
written here only to be measured against. Wall ms and, for inference, CPU ms (ONNX Runtime's
spinning threads burn CPU that a 2-core server needs for decode and encode).
The server-level levers (batching, thread split, batch delay) need HTTP: see docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
from onnx import TensorProto, helper
from PIL import Image, ImageDraw

from bench.images import SIZES, sample_jpeg
from bench.procstat import load_average
from bench.server import DEFAULT_MODEL
from service import imaging, masks, runtime
from service.model_card import ClassInfo, InputSpec, ModelCard
from service.settings import Settings

SMALL, LARGE = SIZES["small"], SIZES["large"]


@dataclass(frozen=True)
class Lever:
    name: str
    before: str
    after: str
    before_ms: float
    after_ms: float
    note: str = ""

    def row(self) -> str:
        gain = self.before_ms / self.after_ms if self.after_ms > 0 else float("inf")
        return (
            f"| {self.name} | {self.before}: {self.before_ms:.2f} ms | {self.after}: "
            f"{self.after_ms:.2f} ms | {gain:.1f}x | {self.note} |"
        )


def best_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` wall ms and the CPU ms (all threads) of that same call."""
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall * 1000.0, best_cpu * 1000.0


def with_argmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ArgMax over classes and a uint8 Cast appended: labels leave the graph."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    logits = graph.output[0].name
    graph.node.extend(
        [
            helper.make_node("ArgMax", [logits], ["bench_argmax"], axis=1, keepdims=0),
            helper.make_node("Cast", ["bench_argmax"], ["labels"], to=TensorProto.UINT8),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("labels", TensorProto.UINT8, None))
    return folded


def _session(
    model: bytes,
    intra: int = 0,
    spinning: bool = False,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    """A session with segserve's options (``runtime.session_options``), one of them changed."""
    settings = Settings(intra_op_threads=intra, intra_op_spinning=spinning)
    options = runtime.session_options(settings)
    options.graph_optimization_level = level
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def shapes_mask(width: int, height: int, classes: int) -> np.ndarray:
    """A mask like the bundled model's answers: background and a few filled shapes."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    w, h = width / 192, height / 192
    draw.ellipse((20 * w, 30 * h, 90 * w, 100 * h), fill=1 % classes)
    draw.rectangle((100 * w, 20 * h, 170 * w, 80 * h), fill=2 % classes)
    draw.polygon([(40 * w, 180 * h), (90 * w, 110 * h), (140 * w, 180 * h)], fill=3 % classes)
    draw.ellipse((120 * w, 120 * h, 180 * w, 170 * h), fill=4 % classes)
    return np.asarray(image)


def _pillow_png(labels: np.ndarray, palette: list[tuple[int, int, int]], **kwargs: object) -> bytes:
    image = Image.fromarray(labels, "P")
    image.putpalette([c for rgb in palette for c in rgb])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def inference_levers(path: Path, card: ModelCard, batch: np.ndarray, repeat: int) -> list[Lever]:
    proto = onnx.load(path)
    levers = []
    n = len(batch)
    if card.output.kind == "logits":
        plain = _session(proto.SerializeToString())
        folded = _session(with_argmax(proto).SerializeToString())
        before, _ = best_ms(lambda: _run(plain, batch).argmax(axis=1).astype(np.uint8), repeat)
        after, _ = best_ms(lambda: _run(folded, batch), repeat)
        levers.append(
            Lever(
                f"argmax (batch {n})",
                "NumPy argmax on float logits",
                "ArgMax+Cast in the graph",
                before,
                after,
                "candidate: export with --labels",
            )
        )
    model = proto.SerializeToString()
    ours = _session(model)
    ours_ms, ours_cpu = best_ms(lambda: _run(ours, batch), repeat)
    for label, session in (
        ("spinning on (ORT's default)", _session(model, spinning=True)),
        ("intra-op threads 1", _session(model, intra=1)),
        (
            "graph optimisation basic",
            _session(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ),
    ):
        ms, cpu = best_ms(partial(_run, session, batch), repeat)
        levers.append(
            Lever(
                f"ORT session (batch {n})",
                f"{label} (CPU {cpu:.1f} ms)",
                f"segserve: 0 threads, no spinning, all optimisations (CPU {ours_cpu:.1f} ms)",
                ms,
                ours_ms,
                "wall ms; CPU ms in brackets",
            )
        )
    return levers


def pixel_levers(card: ModelCard, repeat: int) -> list[Lever]:
    """The levers around inference, in a request's order: decode, prepare, resize, encode."""
    return [
        *_decode_levers(card.input, repeat),
        *_resize_levers(card, repeat),
        *_encoding_levers(card, repeat),
    ]


def _decode_levers(spec: InputSpec, repeat: int) -> list[Lever]:
    need = (spec.width, spec.height)
    large = sample_jpeg("large")
    full, _ = best_ms(
        lambda: imaging.prepare(imaging.decode(large, max_pixels=10**9).image, spec),
        max(1, repeat // 2),
    )
    draft, _ = best_ms(
        lambda: imaging.prepare(imaging.decode(large, max_pixels=10**9, min_size=need).image, spec),
        repeat,
    )
    image = imaging.decode(sample_jpeg("small"), max_pixels=10**9, min_size=need).image
    mean = np.array(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.array(spec.std, np.float32).reshape(3, 1, 1)
    naive, _ = best_ms(
        lambda: (
            (np.asarray(image.resize(need), np.float64).transpose(2, 0, 1) / 255.0 - mean) / std
        ).astype(np.float32),
        repeat,
    )
    ours, _ = best_ms(lambda: imaging.prepare(image, spec), repeat)
    return [
        Lever(
            "decode+prepare 4000x3000 JPEG", "full decode", "JPEG draft (DCT scaling)", full, draft
        ),
        Lever(
            "prepare (resize + normalise)",
            "float64 temporaries",
            "one float32 affine pass, in place",
            naive,
            ours,
        ),
    ]


def _resize_levers(card: ModelCard, repeat: int) -> list[Lever]:
    spec = card.input
    logits = (
        np.random.default_rng(0)
        .standard_normal((card.num_classes, spec.height, spec.width))
        .astype(np.float32)
    )
    labels = logits.argmax(axis=0).astype(np.uint8)

    def upsample_logits() -> np.ndarray:
        planes = [
            np.asarray(Image.fromarray(c).resize(SMALL, Image.Resampling.BILINEAR)) for c in logits
        ]
        return np.stack(planes).argmax(axis=0).astype(np.uint8)

    bilinear, _ = best_ms(upsample_logits, repeat)
    nearest, _ = best_ms(lambda: masks.resize_labels(labels, SMALL), repeat)
    pillow, _ = best_ms(
        lambda: Image.fromarray(labels).resize(LARGE, Image.Resampling.NEAREST), repeat
    )
    ours, _ = best_ms(lambda: masks.resize_labels(labels, LARGE), repeat)
    rows_first, _ = best_ms(
        lambda: labels.take(masks._nearest(spec.height, LARGE[1]), axis=0).take(
            masks._nearest(spec.width, LARGE[0]), axis=1
        ),
        repeat,
    )
    return [
        Lever(
            "mask to 640x480",
            "bilinear logits then argmax",
            "nearest on uint8 labels",
            bilinear,
            nearest,
        ),
        Lever(
            "labels to 4000x3000",
            "NumPy take, rows first",
            "NumPy take, columns first",
            rows_first,
            ours,
            "commit 097e789",
        ),
        Lever("labels to 4000x3000", "Pillow NEAREST", "NumPy take, integer centres", pillow, ours),
    ]


def _encoding_levers(card: ModelCard, repeat: int) -> list[Lever]:
    # What a segmentation model answers: a few large regions at the model's resolution.
    shapes = shapes_mask(card.input.width, card.input.height, card.num_classes)
    levers = []
    for size in (SMALL, LARGE):
        levers += _png_levers(shapes, card.palette(), size, repeat)
        levers.append(_rle_lever(shapes, card.classes, size, repeat))
    large_mask = masks.resize_labels(shapes, LARGE)
    doc = {"model": card.name, "masks": masks.encode_rle(large_mask, card.classes)}
    before, _ = best_ms(lambda: json.dumps(doc).encode(), repeat)
    after, _ = best_ms(lambda: orjson.dumps(doc), repeat)
    levers.append(Lever("RLE JSON body", "json.dumps", "orjson.dumps", before, after))
    return levers


def _png_levers(
    shapes: np.ndarray, palette: list[tuple[int, int, int]], size: tuple[int, int], repeat: int
) -> list[Lever]:
    mask = masks.resize_labels(shapes, size)
    ours = masks.encode_png(shapes, palette, size=size)
    after, _ = best_ms(lambda: masks.encode_png(shapes, palette, size=size), repeat)
    levers = []
    for name, kwargs in (
        ("resize, Pillow default (zlib 6)", {}),
        ("resize, Pillow zlib 1 + Z_RLE", {"compress_level": 1, "compress_type": zlib.Z_RLE}),
    ):
        before, _ = best_ms(partial(_resized_pillow_png, shapes, size, palette, **kwargs), repeat)
        levers.append(
            Lever(
                f"palette PNG {size[0]}x{size[1]}",
                name,
                "from the model-sized labels, repeated rows reused (service/png.py)",
                before,
                after,
                f"{len(_pillow_png(mask, palette, **kwargs)) / 1024:.1f} KiB -> "
                f"{len(ours) / 1024:.1f} KiB",
            )
        )
    return levers


def _resized_pillow_png(
    shapes: np.ndarray, size: tuple[int, int], palette: list[tuple[int, int, int]], **kwargs: object
) -> bytes:
    return _pillow_png(masks.resize_labels(shapes, size), palette, **kwargs)


def _rle_lever(
    shapes: np.ndarray, classes: list[ClassInfo], size: tuple[int, int], repeat: int
) -> Lever:
    before, _ = best_ms(
        lambda: masks.encode_rle(masks.resize_labels(shapes, size), classes), repeat
    )
    after, _ = best_ms(lambda: masks.encode_rle(shapes, classes, size=size), repeat)
    return Lever(
        f"COCO RLE {size[0]}x{size[1]}",
        "resize, runs of the full map",
        "runs of the distinct columns, repeated",
        before,
        after,
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def measure(model: Path, batch_sizes: list[int], repeat: int) -> list[Lever]:
    """Every lever of ``model``: the pixel levers once, the inference levers per batch size."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    levers = pixel_levers(card, repeat)
    for b in batch_sizes:
        batch = (
            np.random.default_rng(b)
            .standard_normal((b, 3, card.input.height, card.input.width))
            .astype(np.float32)
        )
        levers += inference_levers(model, card, batch, repeat)
    return levers


def render(levers: list[Lever]) -> str:
    rows = "\n".join(lever.row() for lever in levers)
    return f"| lever | before | after (segserve) | speed-up | note |\n|---|---|---|---|---|\n{rows}"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    load_before = str(load_average())
    levers = measure(args.model, [int(b) for b in args.batch_sizes.split(",")], args.repeat)
    load_after = str(load_average())
    print(f"load average before {load_before}, after {load_after}")
    print(render(levers))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": str(args.model),
                    "load_before": load_before,
                    "load_after": load_after,
                    "levers": [asdict(v) for v in levers],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
