"""The in-process limit: segserve's own pipeline (``service.pipeline.segment``), with no HTTP.

    python -m bench.offline                       # default model, 640×480 JPEG, batch 1..32
    python -m bench.offline --image large --batch-sizes 1

It serves the model with the core the server runs (``service.core.Service``: session pool,
batcher, worker threads, read from the same ``Settings``, so ``SEGSERVE_*`` variables or
``--set`` change both alike) and calls the function every front door calls. Two figures per
batch size (the batcher's ``max_batch_size``):

- *stage ms*: each stage timed alone, serially, per image, with the pipeline's own stage
  functions (inference: the batch's run / batch); their sum at batch 1 is the single-image
  latency a server cannot beat. Under another input policy than stretch (``--resize``), a lone
  ``segment`` call's own stage times instead (decode + prepare, encode, and everything between
  as "infer": for tiles, the windows' preparation, inference and blending);
- *lone p50* (batch 1 only): the median wall time of ``segment`` called one image at a time,
  as a front door calls it for a request alone (leased, so its CPU work stays on the calling
  thread): what a client at concurrency 1 would see without HTTP, in the same statistic as the
  server's p50;
- *images/s*: ``segment`` called by enough concurrent callers to keep every stage busy (three
  batches in flight: one decoding, one inferring, one encoding), as the ideal client of a server
  would. The best over batch sizes is the offline limit the HTTP service is compared with.

``--resize tiles --tile 256`` (and ``--overlap``, ``--scale``, ``--max-side``) measures an input
policy (docs/API.md); tiles also report windows per image and per second.

``--processes N`` runs N such pipelines in N processes at once (each with the settings given,
e.g. ``--set SEGSERVE_WORKER_THREADS=1``), the layout ``SEGSERVE_PROCESSES=N`` serves with;
images/s is their sum, each batch size started together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np

from bench.images import sample_jpeg
from bench.ort_config import add_ort_config
from bench.procstat import load_average
from bench.server import DEFAULT_MODEL, add_settings_option, settings_dict
from service import imaging, pipeline, policies
from service.core import ServedModel, Service
from service.model_card import Resize
from service.pipeline import OutputFormat, SegmentOptions
from service.policies import PolicyRequest
from service.repository import ModelRepository, ModelVersion
from service.settings import Settings

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
PNG = SegmentOptions(OutputFormat.png)  # what the load tests ask for
IN_FLIGHT_BATCHES = 3
LONE_CALLS_PER_REPEAT = 10  # the lone p50 takes 10 x --repeat calls (200 by default, ~0.6 s)

T = TypeVar("T")


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
    images_per_s: float  # segment() called concurrently
    cpu_ms_per_image: float  # process CPU (all threads) per image in that run
    windows_per_image: int  # model inputs per image: 1, or the windows of the tiles policy
    lone_p50_ms: float | None  # batch 1: segment() one image at a time, median wall time


def served_alone(model: Path) -> ModelRepository:
    """A repository of the one file ``model``: named as its folders say when it lies in a
    repository (``<name>/<version>/model.onnx``), else by its file name, version 1."""
    version_dir = model.parent
    if version_dir.name.isdigit() and int(version_dir.name) >= 1:
        ref = ModelVersion(version_dir.parent.name, int(version_dir.name), model)
    else:
        ref = ModelVersion(model.stem, 1, model)
    return ModelRepository({ref.name: {ref.version: ref}}, ref.name)


async def started(model: Path, settings: Settings) -> tuple[Service, ServedModel]:
    """The core serving ``model`` with ``settings``, loaded and warmed up as a server's is."""
    service = Service(settings, served_alone(model))
    await service.load()
    if service.failure is not None:
        raise service.failure
    return service, service.model(None, None)


async def _timed(fn: Callable[[], Awaitable[T]], repeat: int) -> tuple[float, T]:
    """Best-of-``repeat`` wall time in ms (the least disturbed by other processes), and a result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await fn()
        best = min(best, (time.perf_counter() - t0) * 1000.0)
    assert result is not None
    return best, result


async def stage_ms(
    service: Service, served: ServedModel, data: bytes, batch_size: int, repeat: int
) -> StageMs:
    card, max_pixels = served.card, service.settings.max_pixels

    async def decode() -> imaging.DecodedImage:
        return pipeline.decode_input(data, card, PNG.fmt, max_pixels)

    decode_ms, decoded = await _timed(decode, repeat)

    async def prepare() -> np.ndarray:
        return imaging.prepare(decoded.image, card.input)

    prepare_ms, x = await _timed(prepare, repeat)
    batch = np.ascontiguousarray(np.broadcast_to(x, (batch_size, *x.shape)))
    infer_ms, labels = await _timed(lambda: served.pool.run(batch), repeat)

    async def encode() -> bytes:
        return pipeline.encode_output(labels[0], decoded, served, PNG)

    encode_ms, _ = await _timed(encode, repeat)
    return StageMs(decode_ms, prepare_ms, infer_ms / batch_size, encode_ms)


async def policy_stage_ms(
    service: Service, served: ServedModel, data: bytes, options: SegmentOptions, repeat: int
) -> StageMs:
    """A lone ``segment`` call under ``options.policy``, best of ``repeat`` by wall time."""
    best: tuple[float, pipeline.StageTimes] | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = await pipeline.segment(
            service, served, data, options, deadline=time.monotonic() + 60
        )
        wall_ms = (time.perf_counter() - t0) * 1000.0
        if best is None or wall_ms < best[0]:
            best = (wall_ms, done.times)
    assert best is not None
    wall_ms, times = best
    decode_ms, encode_ms = times.decode_s * 1000.0, times.encode_s * 1000.0
    return StageMs(decode_ms, 0.0, wall_ms - decode_ms - encode_ms, encode_ms)


async def lone_p50_ms(
    service: Service, served: ServedModel, data: bytes, options: SegmentOptions, repeat: int
) -> float:
    """The median wall time of ``repeat`` ``segment`` calls one after another, each leased as a
    front door leases a request (a request alone runs its CPU work on the calling thread)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with service.lease(served.ref.name, served.ref.version):
            await pipeline.segment(service, served, data, options, deadline=time.monotonic() + 60)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def windows_per_image(served: ServedModel, data: bytes, policy: policies.Policy) -> int:
    if policy.resize != "tiles":
        return 1
    size = imaging.decode(data, max_pixels=Settings().max_pixels).size
    return policies.tile_count(policy, policies.content_size(policy, served.card.input, size))


async def throughput(
    service: Service,
    served: ServedModel,
    data: bytes,
    seconds: float,
    options: SegmentOptions,
    windows: int,
) -> tuple[float, float]:
    """Images per second and CPU ms per image with ``segment`` called by enough concurrent
    callers to keep decode, inference and encode busy at once (an image of several windows
    keeps two batches in flight by itself)."""
    callers = IN_FLIGHT_BATCHES * (1 if windows > 1 else service.settings.max_batch_size)
    stop_at = time.perf_counter() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await pipeline.segment(service, served, data, options, deadline=time.monotonic() + 60)
            done += 1

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu_ms = (time.process_time() - cpu0) * 1000.0 / done
    return done / (time.perf_counter() - t0), cpu_ms


async def measure_batch(
    model: Path,
    data: bytes,
    batch_size: int,
    seconds: float,
    repeat: int,
    options: SegmentOptions,
    barrier: Barrier | None,
    measure_lone: bool,
) -> BatchResult:
    """One batch size on a fresh core whose batchers form batches of up to ``batch_size``."""
    settings = Settings().model_copy(update={"max_batch_size": batch_size})
    service, served = await started(model, settings)
    try:
        policy = policies.resolve(served.card.input, options.policy, any_size=served.pool.any_size)
        if policy.resize == "stretch":
            stages = await stage_ms(service, served, data, batch_size, repeat)
        else:
            stages = await policy_stage_ms(service, served, data, options, repeat)
        lone = None
        if batch_size == 1:
            # Every process done with its stage timings: the lone requests run on a machine
            # otherwise idle, as a server's would.
            if barrier is not None:
                await asyncio.to_thread(barrier.wait)
            if measure_lone:
                calls = LONE_CALLS_PER_REPEAT * repeat
                lone = await lone_p50_ms(service, served, data, options, calls)
        if barrier is not None:
            await asyncio.to_thread(barrier.wait)
        windows = windows_per_image(served, data, policy)
        rate, cpu_ms = await throughput(service, served, data, seconds, options, windows)
    finally:
        await service.close()
    return BatchResult(batch_size, stages, rate, cpu_ms, windows, lone)


def run(
    model: Path,
    image: str,
    batch_sizes: list[int],
    seconds: float,
    repeat: int,
    options: SegmentOptions = PNG,
    start_together: Barrier | None = None,
    *,
    measure_lone: bool = True,
) -> dict:
    settings = Settings()
    data = sample_jpeg(image)
    results: list[BatchResult] = []
    for b in batch_sizes:
        result = asyncio.run(
            measure_batch(model, data, b, seconds, repeat, options, start_together, measure_lone)
        )
        results.append(result)
        stage_text = " ".join(f"{k} {v:.2f}" for k, v in asdict(result.stage_ms).items())
        print(
            f"batch {b:>2}: {result.images_per_s:7.1f} img/s, CPU {result.cpu_ms_per_image:.2f} "
            f"ms/img | stage ms {stage_text} | sum {result.stage_ms.total:.2f}",
            flush=True,
        )
    best = max(results, key=lambda r: r.images_per_s)
    single = next((r for r in results if r.batch_size == 1), None)
    return {
        "model": str(model),
        "image": image,
        "image_bytes": len(data),
        "policy": {k: v for k, v in asdict(options.policy).items() if v is not None},
        "windows_per_image": results[0].windows_per_image,
        "threads": {
            "worker_threads": settings.worker_threads,
            "intra_op_threads": settings.intra_op_threads,
            "cpu_count": os.cpu_count(),
        },
        "settings": {k: str(v) for k, v in settings.model_dump().items()},
        "limit_images_per_s": best.images_per_s,
        "limit_batch_size": best.batch_size,
        "single_image_ms": single.stage_ms.total if single else None,
        "single_image_p50_ms": single.lone_p50_ms if single else None,
        "load_average": str(load_average()),
        "batches": [asdict(r) | {"stage_total_ms": r.stage_ms.total} for r in results],
    }


def run_processes(processes: int, *args: Any) -> dict:
    """``run`` in ``processes`` processes at once; images/s summed, CPU ms/image averaged. The
    lone p50 is the first process's alone, once every process has timed its stages: the others
    wait at the barrier meanwhile, so a lone request is timed as a server's, the rest idle."""
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(processes)  # shared by inheritance: passed when each starts
    answers: multiprocessing.SimpleQueue[dict] = spawn.SimpleQueue()
    workers = [
        spawn.Process(target=_run_into, args=(answers, i == 0, *args, barrier))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = _answers(answers, workers)
    for worker in workers:
        worker.join()
    # The process that timed the lone p50 (answers arrive in the order processes finish).
    results.sort(key=lambda r: r["single_image_p50_ms"] is None)
    combined = results[0] | {"processes": processes}
    for i, batch in enumerate(combined["batches"]):
        rows = [r["batches"][i] for r in results]
        batch["images_per_s"] = sum(r["images_per_s"] for r in rows)
        batch["cpu_ms_per_image"] = sum(r["cpu_ms_per_image"] for r in rows) / processes
    best = max(combined["batches"], key=lambda b: b["images_per_s"])
    combined["limit_images_per_s"] = best["images_per_s"]
    combined["limit_batch_size"] = best["batch_size"]
    return combined


def _answers(
    answers: multiprocessing.SimpleQueue[dict], workers: Sequence[BaseProcess]
) -> list[dict]:
    """Every worker's answer; a worker that dies first (its traceback is on stderr) stops the
    others and raises, where waiting on the queue would wait for ever."""
    results: list[dict] = []
    while len(results) < len(workers):
        if not answers.empty():
            results.append(answers.get())
        elif any(worker.exitcode not in (None, 0) for worker in workers):
            for worker in workers:
                worker.terminate()
            raise RuntimeError("an offline process failed (its traceback is above)")
        else:
            time.sleep(0.05)
    return results


def _run_into(answers: multiprocessing.SimpleQueue[dict], measure_lone: bool, *args: Any) -> None:
    answers.put(run(*args, measure_lone=measure_lone))


def summary(result: dict) -> str:
    limit, windows, single = (
        result["limit_images_per_s"],
        result["windows_per_image"],
        result["single_image_ms"],
    )
    line = f"offline limit: {limit:.1f} img/s at batch {result['limit_batch_size']}"
    if single is not None:
        line += f"; single image {single:.2f} ms (lone p50 {result['single_image_p50_ms']:.2f} ms)"
    if windows > 1:
        line += f"; {windows} windows/image, {windows * limit:.1f} windows/s"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--image", default="small", choices=["small", "large"])
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--seconds", type=float, default=3.0, help="pipelined run per batch size")
    # 20, not 5: five timings in a row can all be disturbed on a shared 2-core machine (one
    # run's single image read 2.96 ms where the others read 2.3-2.4); 20 cost ~0.2 s more.
    parser.add_argument("--repeat", type=int, default=20, help="stage timings: best of N")
    add_settings_option(parser, help="a server setting (as the env variable)")
    parser.add_argument(
        "--ort-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ONNX Runtime session config entry (as bench.variant)",
    )
    parser.add_argument("--resize", choices=list(get_args(Resize)), help="input policy")
    parser.add_argument("--max-side", type=int, help="native: longest side the model sees")
    parser.add_argument("--tile", type=int, help="tiles: window side")
    parser.add_argument("--overlap", type=float, help="tiles: fraction windows overlap")
    parser.add_argument("--scale", type=float, help="tiles: image scale before tiling")
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
        SegmentOptions(
            OutputFormat.png,
            policy=PolicyRequest(args.resize, args.max_side, args.tile, args.overlap, args.scale),
        ),
    )
    processes = args.processes
    result = run_processes(processes, *run_args) if processes > 1 else run(*run_args)
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
