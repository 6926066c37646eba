"""The in-process limit: segserve's own decode → prepare → infer → encode, with no HTTP.

    python -m bench.offline                       # default model, 640×480 JPEG, batch 1..32
    python -m bench.offline --image large --batch-sizes 1

It imports the service's functions (``service.imaging``, ``service.masks``, ``service.runtime``)
rather than re-implementing them, and gives them the server's thread budget, read from the same
``Settings`` (so ``SEGSERVE_*`` variables or ``--set`` change both alike):

- decode/prepare and encode run on ``worker_threads`` pool threads (the server's pool);
- inference runs on the session that ``service.runtime`` builds, with the same ORT options
  (``intra_op_threads``, graph optimisation, spinning) and the same label output (uint8).

Two figures per batch size:
- *stage ms*: each stage timed alone, serially, per image (inference: the batch's run / batch);
  their sum at batch 1 is the single-image latency a server cannot beat;
- *images/s*: the stages pipelined the way an ideal server would — batch k+1 decoding on the
  pool while batch k infers and batch k-1 encodes. The best over batch sizes is the offline
  limit the HTTP service is compared with.

``--processes N`` runs N such pipelines in N processes at once (each with the settings given,
e.g. ``--set SEGSERVE_WORKER_THREADS=1``), the layout ``SEGSERVE_PROCESSES=N`` serves with;
images/s is their sum, each batch size started together.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import sample_jpeg
from bench.procstat import load_average
from bench.server import DEFAULT_MODEL, add_settings_option, settings_dict
from bench.variant import add_ort_config
from service import imaging, masks, runtime
from service.model_card import ModelCard
from service.settings import Settings

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class StageMs:
    decode: float
    prepare: float
    infer: float
    encode: float  # labels scaled to the image's size while encoding, as the server does

    @property
    def total(self) -> float:
        return self.decode + self.prepare + self.infer + self.encode


@dataclass(frozen=True)
class BatchResult:
    batch_size: int
    stage_ms: StageMs  # per image, serial
    images_per_s: float  # pipelined over the worker pool + session
    cpu_ms_per_image: float  # process CPU (all threads) per image in the pipelined run


class Pipeline:
    """The service's per-image functions bound to one model and the server's settings."""

    def __init__(self, model: Path, settings: Settings) -> None:
        session = runtime.open_session(model, settings)
        self.card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
        runtime.check_signature(session, self.card, model)
        self.runner = runtime.Runner(session, self.card)
        self.palette = self.card.palette()
        self.max_pixels = settings.max_pixels

    def decode(self, data: bytes) -> imaging.DecodedImage:
        spec = self.card.input
        return imaging.decode(data, max_pixels=self.max_pixels, min_size=(spec.width, spec.height))

    def front(self, data: bytes) -> tuple[tuple[int, int], np.ndarray]:
        decoded = self.decode(data)
        return decoded.size, imaging.prepare(decoded.image, self.card.input)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)

    def back(self, labels: np.ndarray, size: tuple[int, int]) -> bytes:
        return masks.encode_png(labels, self.palette, size=size)


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Best-of-``repeat`` wall time in ms (the least disturbed by other processes), and a result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, (time.perf_counter() - t0) * 1000.0)
    return best, result


def stage_ms(pipe: Pipeline, data: bytes, batch_size: int, repeat: int) -> StageMs:
    spec = pipe.card.input
    decode_ms, decoded = _timed(lambda: pipe.decode(data), repeat)
    prepare_ms, x = _timed(lambda: imaging.prepare(decoded.image, spec), repeat)
    batch = np.ascontiguousarray(np.broadcast_to(x, (batch_size, *x.shape)))
    infer_ms, labels = _timed(lambda: pipe.infer(batch), repeat)
    encode_ms, _ = _timed(lambda: pipe.back(labels[0], decoded.size), repeat)
    return StageMs(decode_ms, prepare_ms, infer_ms / batch_size, encode_ms)


def pipelined(
    pipe: Pipeline, data: bytes, batch_size: int, seconds: float, pool: ThreadPoolExecutor
) -> tuple[float, float]:
    """Images per second and CPU ms per image, the stages overlapping as in a server."""
    spec = pipe.card.input
    batch = np.empty((batch_size, 3, spec.height, spec.width), dtype=np.float32)
    pipe.infer(batch)  # first run at a new shape allocates; keep it out of the timing
    backs: list[Future[bytes]] = []
    done_images = batches = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    fronts = [pool.submit(pipe.front, data) for _ in range(batch_size)]
    while True:
        items = [f.result() for f in fronts]
        last = batches >= 2 and time.perf_counter() - t0 >= seconds
        if not last:  # the next batch decodes while this one infers
            fronts = [pool.submit(pipe.front, data) for _ in range(batch_size)]
        for i, (_, x) in enumerate(items):
            batch[i] = x
        labels = pipe.infer(batch)
        backs += [pool.submit(pipe.back, labels[i], size) for i, (size, _) in enumerate(items)]
        done_images += batch_size
        batches += 1
        if last:
            break
    for f in backs:
        f.result()
    cpu_ms = (time.process_time() - cpu0) * 1000.0 / done_images
    return done_images / (time.perf_counter() - t0), cpu_ms


def run(
    model: Path,
    image: str,
    batch_sizes: list[int],
    seconds: float,
    repeat: int,
    start_together: Barrier | None = None,
) -> dict:
    settings = Settings()
    pipe = Pipeline(model, settings)
    data = sample_jpeg(image)
    results: list[BatchResult] = []
    with ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="bench-cpu") as pool:
        for b in batch_sizes:
            stages = stage_ms(pipe, data, b, repeat)
            if start_together is not None:
                start_together.wait()
            rate, cpu_ms = pipelined(pipe, data, b, seconds, pool)
            results.append(BatchResult(b, stages, rate, cpu_ms))
            stage_text = " ".join(f"{k} {v:.2f}" for k, v in asdict(stages).items())
            print(
                f"batch {b:>2}: {rate:7.1f} img/s, CPU {cpu_ms:.2f} ms/img | stage ms "
                f"{stage_text} | sum {stages.total:.2f}",
                flush=True,
            )
    best = max(results, key=lambda r: r.images_per_s)
    single = next((r for r in results if r.batch_size == 1), None)
    return {
        "model": str(model),
        "image": image,
        "image_bytes": len(data),
        "threads": {
            "worker_threads": settings.worker_threads,
            "intra_op_threads": settings.intra_op_threads,
            "cpu_count": os.cpu_count(),
        },
        "settings": {k: str(v) for k, v in settings.model_dump().items()},
        "limit_images_per_s": best.images_per_s,
        "limit_batch_size": best.batch_size,
        "single_image_ms": single.stage_ms.total if single else None,
        "load_average": str(load_average()),
        "batches": [asdict(r) | {"stage_total_ms": r.stage_ms.total} for r in results],
    }


def run_processes(processes: int, *args: Any) -> dict:
    """``run`` in ``processes`` processes at once; images/s summed, CPU ms/image averaged."""
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(processes)  # shared by inheritance: passed when each starts
    answers: multiprocessing.SimpleQueue[dict] = spawn.SimpleQueue()
    workers = [
        spawn.Process(target=_run_into, args=(answers, *args, barrier)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [answers.get() for _ in workers]
    for worker in workers:
        worker.join()
    combined = results[0] | {"processes": processes}
    for i, batch in enumerate(combined["batches"]):
        rows = [r["batches"][i] for r in results]
        batch["images_per_s"] = sum(r["images_per_s"] for r in rows)
        batch["cpu_ms_per_image"] = sum(r["cpu_ms_per_image"] for r in rows) / processes
    best = max(combined["batches"], key=lambda b: b["images_per_s"])
    combined["limit_images_per_s"] = best["images_per_s"]
    combined["limit_batch_size"] = best["batch_size"]
    return combined


def _run_into(answers: multiprocessing.SimpleQueue[dict], *args: Any) -> None:
    answers.put(run(*args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--image", default="small", choices=["small", "large"])
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--seconds", type=float, default=3.0, help="pipelined run per batch size")
    parser.add_argument("--repeat", type=int, default=5, help="stage timings: best of N")
    add_settings_option(parser, help="a server setting (as the env variable)")
    parser.add_argument(
        "--ort-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ONNX Runtime session config entry (as bench.variant)",
    )
    parser.add_argument("--processes", type=int, default=1, help="pipelines run at once")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    os.environ.update(settings_dict(args.settings))
    add_ort_config(args.ort_config)
    print(f"load average: {load_average()}", flush=True)
    run_args = (
        args.model,
        args.image,
        [int(b) for b in args.batch_sizes.split(",")],
        args.seconds,
        args.repeat,
    )
    processes = args.processes
    result = run_processes(processes, *run_args) if processes > 1 else run(*run_args)
    print(
        f"offline limit: {result['limit_images_per_s']:.1f} img/s at batch "
        f"{result['limit_batch_size']}; single image {result['single_image_ms']:.2f} ms"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
