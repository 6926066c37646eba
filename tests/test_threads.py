"""The worker threads: the data plane's threads (decode/encode workers, the session pool, ONNX
Runtime's own) run at ``SEGSERVE_WORKER_NICE`` above the event loop's thread, so a saturated CPU
serves the loop first."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from service.core import Service
from service.repository import ModelRepository, ModelVersion
from service.runtime import load_model
from service.settings import Settings
from service.threads import WorkerThreads
from tests.support import write_tiny_model

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


@LINUX
def _nice(tid: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id())


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _niceness_of_threads_since(before: set[int]) -> dict[int, int]:
    """The nice value of each thread started since ``before`` was listed, once the listing has
    settled: a thread just joined (the loader) can still be listed while it ends, and a listing
    taken meanwhile can skip a live thread."""
    deadline = time.monotonic() + 2.0
    while True:
        time.sleep(0.05)
        found = {}
        for tid in _tasks() - before:
            try:
                found[tid] = _nice(tid)
            except ProcessLookupError:
                continue
        if found.keys() == _tasks() - before or time.monotonic() > deadline:
            return found


def test_worker_threads_run_at_their_nice_above_the_main_thread() -> None:
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())

    async def both() -> list[int]:
        lowered, plain = WorkerThreads(2, "low", nice=3), WorkerThreads(1, "plain")
        try:
            return [await lowered.run(_nice), await lowered.run(_nice), await plain.run(_nice)]
        finally:
            lowered.shutdown()
            plain.shutdown()

    assert asyncio.run(both()) == [min(base + 3, 19)] * 2 + [base]
    assert _nice(os.getpid()) == base  # the caller's thread is left as it was


@LINUX
def test_a_loaded_model_s_threads_onnx_runtime_s_included_are_lowered(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path, "tiny", 1, size=8)
    settings = Settings(provider="cpu", intra_op_threads=2, sessions=2, worker_nice=4)
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    before = _tasks()
    loaded: list = []
    loader = threading.Thread(
        target=lambda: loaded.append(load_model(ModelVersion("tiny", 1, path), settings))
    )
    loader.start()
    loader.join()
    _, pool = loaded[0]
    try:
        started = _niceness_of_threads_since(before)
        # two pool threads, and ONNX Runtime's intra-op thread of each session (2 threads: the
        # caller's and one of its own)
        assert len(started) >= 4
        assert set(started.values()) == {min(base + 4, 19)}
        assert _nice(os.getpid()) == base
    finally:
        pool.close()


def test_a_request_alone_runs_its_cpu_work_on_the_event_loop_others_on_the_workers() -> None:
    service = Service(Settings(provider="cpu"), ModelRepository({}, None))

    async def where() -> list[str]:
        names = []
        for requests in (1, 2, 0):  # 0: no request holds a lease (never inline)
            service.admission.in_flight = requests
            names.append(await service.run_cpu(lambda: threading.current_thread().name))
        return names

    try:
        alone, shared, none = asyncio.run(where())
    finally:
        service.workers.shutdown()
    assert alone == threading.current_thread().name
    assert shared.startswith("cpu_")
    assert none.startswith("cpu_")
