"""One server process: uvicorn with segserve's shutdown rules, on its own or under the
supervisor of ``service.processes``."""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from service.app import create_app
from service.core import Service, lone_process
from service.errors import ModelLoadError
from service.listen import bound_socket, cannot_listen, taken
from service.repository import ModelRepository
from service.settings import Settings

log = logging.getLogger("segserve")


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: SIGTERM turns /readyz 503 at once and keeps serving ``drain_delay_s`` (so
    load balancers stop sending) before uvicorn stops accepting and lets in-flight requests
    finish; a failed model load stops the server with exit code 1."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: Service,
        drain_delay_s: float,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.service = service
        self.on_listening = on_listening
        self.drain_delay_s = drain_delay_s
        self.stop_at: float | None = None
        self.drain_announced = False
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after shutdown, and the process
        # would die by SIGTERM instead of exiting 0.
        self.service.begin_drain()
        if self.stop_at is not None:  # a second signal, of either kind: stop at once
            self.should_exit = self.force_exit = True
            return
        delay = 0.0 if sig == signal.SIGINT else self.drain_delay_s
        self.stop_at = time.monotonic() + delay

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            log.info("listening on http://%s:%d: the page at /, the API at /docs", host, port)
        if self.started and self.on_listening is not None:
            self.on_listening()

    async def on_tick(self, counter: int) -> bool:
        """Every 0.1 s on the event loop (the signal handler only records the signal)."""
        if self.service.failure is not None:
            self.exit_code = 1
            self.should_exit = True
        if self.stop_at is not None and not self.drain_announced:
            self.drain_announced = True
            log.info(
                "draining: /readyz answers 503; stopping in %.1f s, then finishing "
                "in-flight requests",
                max(0.0, self.stop_at - time.monotonic()),
            )
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    *,
    on_listening: Callable[[], None] | None = None,
    all_listening: Callable[[], bool] = lone_process,
) -> int:
    """Run one server process until it stops; its exit code. Logging must be configured already.

    Under ``service.processes``: ``sockets`` are bound to the port and not yet listening (they
    replace binding ``host``:``port``), ``on_listening`` is called once this process listens and
    ``all_listening`` says whether every process does (readiness waits for it)."""
    if sockets is None:  # one process; several are checked by their supervisor
        try:
            sockets = [bound_socket(settings.host, settings.port)]
        except OSError as exc:
            return cannot_listen(settings.host, settings.port, exc)
        grpc = settings.grpc_port
        if grpc is not None and (code := taken(settings.host, grpc, "SEGSERVE_GRPC_PORT")):
            return code
    try:
        repository = ModelRepository.scan(settings.model_repository, settings.default_model)
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        return 1
    app = create_app(settings, repository, all_listening=all_listening)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # the caller configured logging (JSON or text)
        access_log=False,  # one line per request comes from service.access
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        server_header=False,
        # loop/http "auto": uvloop and httptools when installed (uvicorn[standard]).
    )
    server = DrainingServer(config, app.state.service, settings.drain_delay_s, on_listening)
    server.run(sockets=sockets)
    if not server.started:
        return 1
    return server.exit_code
