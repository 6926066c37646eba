"""The access record of every request: one log line, and the inference request metrics
(``/segment`` and the Open Inference Protocol's ``/v2/models/.../infer``).

A pure ASGI middleware (no extra task, the body untouched) that sees the final status of every
answer, errors included: it sits outside everything that may answer (the API key check and the
upload budget too), inside the request id. The route, or the middleware that refused the
request, fills in what only it knows (model, format, error code) through the ``AccessRecord``
in the scope's state (``request.state.access``; errors: ``note_error``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.repository import ModelVersion

log = logging.getLogger("segserve.access")

SEGMENT_PATH = "/segment"
_OIP_MODELS, _OIP_INFER = "/v2/models/", "/infer"
# Probes and scrapes arrive every few seconds: their lines are debug, the rest info.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# Statuses that reach the client before the route runs (FastAPI's parameter validation, routing).
_REASONS = {404: "not_found", 405: "method_not_allowed", 422: "invalid_parameter"}


@dataclass(slots=True)
class AccessRecord:
    arrived: float  # time.monotonic() when the request came in: deadlines are measured from here
    model: str = ""
    version: str = ""
    format: str = ""
    error_code: str | None = None  # the problem code of an error answer
    rejection: str | None = None  # the rejection metric's reason, where not the error code

    def label(self, ref: ModelVersion) -> None:
        """Labelled only once resolved: a client's made-up names never become metric labels."""
        self.model, self.version = ref.labels


def access_record(request: Request) -> AccessRecord:
    record: AccessRecord = request.state.access
    return record


def note_error(scope: Scope, code: str, rejection: str | None = None) -> None:
    """Write an error answer's problem ``code`` into the request's access record, and the
    rejection metric's reason where it is not the code (nothing outside ``AccessLog``, as in a
    bare ``TestClient``)."""
    record: AccessRecord | None = scope.get("state", {}).get("access")
    if record is not None:
        record.error_code, record.rejection = code, rejection


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = AccessRecord(time.monotonic())
        scope.setdefault("state", {})["access"] = record
        status = 500  # what the client sees if the app dies before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path: str = scope["path"]
        counted = is_inference(path) and scope["method"] != "OPTIONS"  # not a CORS preflight
        if counted:
            metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            latency = time.monotonic() - record.arrived
            if counted:
                metrics.IN_FLIGHT.dec()
                reason = record.rejection or record.error_code or _REASONS.get(status)
                metrics.observe_request(record.model, record.format, status, latency, reason)
            log.log(
                logging.DEBUG if _is_probe(path) else logging.INFO,
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "latency_ms": round(latency * 1000, 2),
                    "model": record.model or None,
                    "version": record.version or None,
                    "format": record.format or None,
                    "error": record.error_code,
                },
            )


def _is_probe(path: str) -> bool:
    """Health probes and scrapes, segserve's and the Open Inference Protocol's."""
    return path in _QUIET_PATHS or (path.startswith(_OIP_MODELS) and path.endswith("/ready"))


def is_inference(path: str) -> bool:
    """Whether ``path`` asks for masks: ``/segment`` or an OIP ``/v2/models/{m}[...]/infer``."""
    return path == SEGMENT_PATH or (path.startswith(_OIP_MODELS) and path.endswith(_OIP_INFER))
