"""Several server processes on one port (``SEGSERVE_PROCESSES`` > 1), and their supervisor.

Why: in one process the event loop, the decode/encode threads and the inference thread hand
every request to each other under one interpreter lock. On the 2-core bench machine two
processes with one worker thread and one ONNX Runtime thread each serve ~20 % more than one
process with the same threads in total (docs/PERFORMANCE.md). Each process loads the models and
batches its own requests, so on a GPU one process (bigger batches, one CUDA context) stays best.

The supervisor starts the processes with ``spawn`` (they inherit the environment, nothing else).
Each binds its own socket to the port with SO_REUSEPORT, and the kernel spreads new connections
evenly over the listening ones. (One shared socket instead lets whichever process is idle at
the moment accept a whole burst of keep-alive connections: measured, one process then served
most of a c=32 load.) A socket only joins once its process has loaded its models and uvicorn
calls listen(), so no request meets a process that is still loading. ``/readyz`` answers 200
only once every process listens (a count in shared memory): a load balancer that sees the
server ready can reach all of its capacity, and a client opening several connections spreads
over all processes. SIGTERM/SIGINT are
passed on (each process then drains as a lone server does: /readyz 503, in-flight requests
finish) and the supervisor exits 0 once all have stopped cleanly. When one fails (a model that
cannot load, a crash) the others are stopped and the supervisor exits 1: a server quietly
running at a fraction of its capacity is worse than a restart by the orchestrator.

Metrics: every process writes prometheus_client's multiprocess files into a fresh directory
(``service.metrics``), so /metrics reports all of them whichever process answers.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from types import FrameType

from prometheus_client import multiprocess

from service import metrics
from service.errors import ModelLoadError
from service.listen import bound_socket, taken
from service.logs import configure_logging
from service.repository import ModelRepository
from service.settings import Settings

log = logging.getLogger("segserve.processes")

# Exit codes of a process that a passed-on signal stopped while it was still starting (before
# uvicorn installed its handlers): a requested stop, not a failure.
_STOPPED_BY_US = frozenset({-signal.SIGTERM, -signal.SIGINT})


def supervise(settings: Settings) -> int:
    """Serve with ``settings.processes`` processes until they stop; the exit code."""
    try:  # a wrong repository fails here, once, before anything starts
        ModelRepository.scan(settings.model_repository, settings.default_model)
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        return 1
    ports = {"SEGSERVE_PORT": settings.port, "SEGSERVE_GRPC_PORT": settings.grpc_port}
    for setting, port in ports.items():  # the processes share them: free before any starts
        if port is not None and (code := taken(settings.host, port, setting)) is not None:
            return code
    with tempfile.TemporaryDirectory(prefix="segserve-metrics-") as metrics_dir:
        os.environ[metrics.MULTIPROCESS_DIR_ENV] = metrics_dir
        spawn = multiprocessing.get_context("spawn")
        listening = spawn.Value("i", 0)  # processes listening; handed over at start
        children = [
            spawn.Process(target=_serve_one, args=(listening,), name=f"segserve-{i}")
            for i in range(settings.processes)
        ]
        return _run(children, f"{settings.host}:{settings.port}")


def _run(children: Sequence[multiprocessing.process.BaseProcess], address: str) -> int:
    """Start the processes, pass stop signals on, stop everyone when one fails; 0 if all
    exited cleanly, else 1."""
    signals: list[int] = []

    def pass_on(sig: int, _: FrameType | None) -> None:
        signals.append(sig)
        # The first signal asks for a drain; a second one, as for a lone server, for haste.
        _signal_all(children, signal.SIGTERM if len(signals) == 1 else signal.SIGINT)

    # Handlers first: a SIGTERM while the processes start must not kill the supervisor alone.
    # (Spawned processes start with default handlers: exec resets them.)
    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    for child in children:
        child.start()
    if signals:  # a stop asked for while some were not started yet
        _signal_all(children, signal.SIGTERM)
    log.info(
        "started %d server processes on %s",
        len(children),
        address,
        extra={"pids": [child.pid for child in children]},
    )
    code = 0
    running = list(children)
    while running:
        multiprocessing.connection.wait([child.sentinel for child in running])
        for child in [c for c in running if c.exitcode is not None]:
            running.remove(child)
            if child.pid is not None:
                multiprocess.mark_process_dead(child.pid)  # drop its live gauges
            if child.exitcode == 0 or (signals and child.exitcode in _STOPPED_BY_US):
                continue  # a clean stop, or a process stopped before it could handle signals
            code = 1
            if not signals:
                log.error(
                    "server process %s exited with %s; stopping the others",
                    child.pid,
                    child.exitcode,
                )
                signals.append(signal.SIGTERM)
                _signal_all(running, signal.SIGTERM)
    return code


def _signal_all(children: Sequence[multiprocessing.process.BaseProcess], sig: int) -> None:
    for child in children:
        if child.pid is not None and child.exitcode is None:
            os.kill(child.pid, sig)


def _serve_one(listening: Synchronized[int]) -> None:
    """A spawned server process: the same settings (from the environment), its own socket, and
    the count of processes ``listening``, which it joins once it listens."""
    from service import server  # not imported by the supervisor, which never serves

    def joined() -> None:
        with listening.get_lock():
            listening.value += 1

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        sock = bound_socket(settings.host, settings.port, shared=True)
    except OSError as exc:  # taken since the supervisor found it free
        log.error("cannot bind %s:%d: %s", settings.host, settings.port, exc)
        sys.exit(1)
    sys.exit(
        server.serve(
            settings,
            sockets=[sock],
            on_listening=joined,
            all_listening=lambda: listening.value >= settings.processes,
        )
    )
