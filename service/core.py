"""The served models and their readiness: what every front door serves from.

Life of a ``Service``:
1. ``load`` creates each version's sessions, reads and checks its card, runs a warm-up batch and
   starts its batcher; then the service is ``loaded``. A ``ModelLoadError`` marks it ``failed``
   (``service.server`` then stops with a non-zero exit code: never a half-ready server).
2. ``ready`` is what ``/readyz`` reports: loaded, not draining, and every sibling process of the
   same server listening (``all_listening``; see ``service.processes``).
3. With model control (``service.control``) versions come and go while serving: ``swap`` routes
   new requests to the new set at once, and ``retire`` releases a version once the requests that
   hold it (``lease``) have finished.
4. ``begin_drain`` (SIGTERM) turns ``ready`` false at once; requests are still served until the
   edge stops accepting them. ``close`` finishes queued work and releases sessions and threads.

Nothing here knows HTTP: requests go through ``service.pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
from prometheus_client import Histogram

from service import metrics
from service.admission import Admission
from service.batching import Batcher, RunBatch
from service.errors import ModelLoadError, NotReady
from service.lanes import Lanes, MakeBatcher, Shape
from service.model_card import ModelCard
from service.repository import ModelRepository, ModelVersion
from service.runtime import SessionPool, load_model
from service.settings import Settings
from service.threads import WorkerThreads

log = logging.getLogger("segserve.core")

P = ParamSpec("P")
T = TypeVar("T")
FileStamp = tuple[int, int]


@dataclass(slots=True, eq=False)
class ServedModel:
    ref: ModelVersion
    card: ModelCard
    pool: SessionPool
    batcher: Batcher  # the lane of the model's own input size, labels out
    lanes: Lanes  # that one and those the input policies add (service/lanes.py)
    queue_wait: Histogram  # this version's child of metrics.QUEUE_WAIT, looked up once
    stamp: FileStamp  # the file as loaded: a changed file is a new load
    leases: int = 0  # requests holding this version (``Service.lease``); retirement waits for 0
    unleased: asyncio.Event = field(default_factory=asyncio.Event)  # set while leases == 0


def lone_process() -> bool:
    """``all_listening`` of a server that is one process: it is listening when it serves."""
    return True


class Service:
    """Everything a request needs: the served models, the CPU worker threads, the state."""

    def __init__(
        self,
        settings: Settings,
        repository: ModelRepository,
        *,
        all_listening: Callable[[], bool] = lone_process,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.models: dict[str, ServedModel] = {}
        self.workers = WorkerThreads(settings.worker_threads, "cpu", settings.worker_nice)
        self.admission = Admission(settings.max_queue_wait_s)
        self.all_listening = all_listening
        self.loaded = False
        self.draining = False
        self.failure: ModelLoadError | None = None

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and self.all_listening()

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining"
        if not self.loaded:
            return "models are still loading"
        return "not every server process is listening yet"

    def require_loaded(self) -> None:
        if not self.loaded:
            raise NotReady("models are still loading")

    def model(self, name: str | None, version: int | None) -> ServedModel:
        """The loaded model a request names; NotReady while loading. Draining still serves:
        requests keep coming until load balancers have seen /readyz turn 503."""
        ref = self.repository.resolve(name, version)
        self.require_loaded()
        return self.models[ref.key]

    @contextlib.contextmanager
    def lease(
        self,
        name: str | None,
        version: int | None,
        *,
        resolved: Callable[[ModelVersion], None] | None = None,
    ) -> Iterator[ServedModel]:
        """``model(name, version)``, kept serving until the block ends even if it is retired.
        Raises Overloaded first when the server would keep the request waiting too long
        (``service.admission``); ``resolved`` learns the version before that, so that a
        refusal too is labelled with its model."""
        served = self.model(name, version)
        if resolved is not None:
            resolved(served.ref)
        self.admission.check()
        self.admission.enter()
        served.leases += 1
        served.unleased.clear()
        try:
            yield served
        finally:
            served.leases -= 1
            if not served.leases:
                served.unleased.set()
            self.admission.leave()

    def swap(self, models: dict[str, ServedModel]) -> None:
        """Serve exactly ``models`` from now on (one assignment each: no request sees a mix)."""
        versions: dict[str, dict[int, ModelVersion]] = {}
        for served in models.values():
            versions.setdefault(served.ref.name, {})[served.ref.version] = served.ref
        default = self.repository.default
        if default not in versions and self.settings.default_model is None and versions:
            default = min(versions)  # the first model by name, as at start-up
        self.repository = ModelRepository(versions, default)
        self.models = models

    async def retire(self, served: ServedModel) -> None:
        """Release ``served`` (already out of ``models``) once no request holds it."""
        if served.leases:
            with contextlib.suppress(TimeoutError):  # as a shutdown would, after its timeout
                await asyncio.wait_for(served.unleased.wait(), self.settings.shutdown_timeout_s)
        await served.lanes.stop()  # queued items still finish
        served.pool.close()
        if served.ref.key not in self.models:  # else a new file of it reports through them
            metrics.forget_version(*served.ref.labels, served.pool.provider)
        log.info("unloaded %s", served.ref.key)

    async def run_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a request's decode/resize/encode work: on the worker threads, off the event loop,
        while other requests are in flight; right here for a request alone, which saves two
        thread hand-offs (~0.3 ms of a lone request's latency, docs/PERFORMANCE.md) and holds
        up only a request that arrives meanwhile, for the rest of that one call. Long work (a
        tiled image's) goes to ``workers`` directly."""
        if self.admission.in_flight == 1:
            return fn(*args, **kwargs)
        return await self.workers.run(fn, *args, **kwargs)

    def begin_drain(self) -> None:
        """Turn readiness off. Only sets a flag: it is called from a signal handler."""
        self.draining = True

    async def load(self) -> None:
        try:
            for ref in self.repository.all():
                self.models[ref.key] = await self.serve_version(ref)
        except ModelLoadError as exc:
            self.failure = exc
            log.error("cannot serve the model repository: %s", exc)
            return
        except Exception as exc:  # a bug, but the process must still stop rather than hang
            self.failure = ModelLoadError(f"unexpected error while loading models: {exc!r}")
            log.exception("unexpected error while loading models")
            return
        self.loaded = True
        # What is alive now (modules, sessions, the app) lives as long as the process: moved out
        # of the collector's sight, a full collection walks only what requests left behind.
        # In the server: -0.18 ms of CPU per request at c=32 (docs/PERFORMANCE.md).
        gc.freeze()
        log.info("ready", extra={"models": sorted(self.models), "default": self.repository.default})

    async def serve_version(self, ref: ModelVersion) -> ServedModel:
        """Load, check and warm up ``ref`` and start its batcher (not yet routed to: see
        ``swap``). Raises ModelLoadError when it cannot be served."""
        started = time.perf_counter()
        stamp = file_stamp(ref.path)  # before reading: a write during the load shows next time
        card, pool = await asyncio.to_thread(load_model, ref, self.settings)
        spec = card.input
        await asyncio.to_thread(pool.warm_up, np.zeros((1, 3, spec.height, spec.width), spec.dtype))
        # Set on every change rather than read at scrape time: with several server processes
        # the scrape is answered by one of them (service/processes.py).
        lanes = Lanes(self._lane_maker(pool, ref), metrics.QUEUE_DEPTH.labels(*ref.labels).set)
        batcher = await lanes.get((spec.height, spec.width), scores=False)
        metrics.MODEL_INFO.labels(ref.name, str(ref.version), pool.provider).set(1)
        log.info(
            "loaded %s",
            ref.key,
            extra={
                "provider": pool.provider,
                "sessions": pool.size,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        queue_wait = metrics.QUEUE_WAIT.labels(*ref.labels)
        return ServedModel(ref, card, pool, batcher, lanes, queue_wait, stamp)

    def _lane_maker(self, pool: SessionPool, ref: ModelVersion) -> MakeBatcher:
        settings = self.settings

        def make(
            shape: Shape, scores: bool, on_depth: Callable[[int], None], queued: Callable[[], int]
        ) -> Batcher:
            height, width = shape
            own = (height, width) == (pool.input_height, pool.input_width) and not scores
            # Every batch holds at most max_batch_pixels (native inputs are large; a native image
            # of the model's own size shares the first lane); other lanes allocate per batch so
            # that an idle lane holds no memory.
            budget = max(1, settings.max_batch_pixels // (height * width))
            size = min(settings.max_batch_size, budget, pool.batch_limit or budget)
            kind = "/scores" if scores else ""
            return Batcher(
                _instrumented(pool, ref, scores),
                max_batch_size=size,
                max_delay_s=settings.max_batch_delay_s,
                max_queue=settings.max_queue,
                concurrency=pool.size,
                name=ref.key if own else f"{ref.key}@{width}x{height}{kind}",
                wait_for_announced=settings.batch_eager,
                on_depth=on_depth,
                queued=queued,
                keep_buffers=own,
            )

        return make

    async def close(self) -> None:
        """Finish queued work, then release sessions and threads."""
        await asyncio.gather(*(m.lanes.stop() for m in self.models.values()))
        for served in self.models.values():
            served.pool.close()
        self.workers.shutdown()


def file_stamp(path: Path) -> FileStamp:
    """What tells a changed model file apart: its modification time and size."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _instrumented(pool: SessionPool, ref: ModelVersion, scores: bool) -> RunBatch:
    infer_time = metrics.INFERENCE_TIME.labels(*ref.labels)
    batch_size = metrics.BATCH_SIZE.labels(*ref.labels)

    async def run_batch(batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        labels = await pool.run(batch, scores=scores)
        infer_time.observe(time.perf_counter() - started)
        batch_size.observe(len(batch))
        return labels

    return run_batch
