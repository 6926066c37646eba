"""The one place that turns errors into answers: every ``ServiceError`` by the status and
``code`` it carries, plus what FastAPI and Starlette raise themselves, plus what nothing else
answers (``LastResort``, inside the request id and the access log, so that its answer carries
the id and its line the code). Each handler also writes the problem ``code`` into the request's
access record (``service.access``).

segserve's own routes answer problem+json (RFC 9457). The Open Inference Protocol routes
(``/v2``...) answer the protocol's error object, ``{"error": "<message>"}`` (KServe's
inference_rest.md), with the same status except that a bad request is 400 there, never 422.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access import note_error
from service.errors import InvalidParameter, NotReady, ServiceError
from service.semantics import slashless_route

log = logging.getLogger("segserve.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"

OIP_PREFIX = "/v2"
_HTTP_CODES = {404: ("not_found", "Not found"), 405: ("method_not_allowed", "Method not allowed")}


def problem(
    status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "type": f"urn:segserve:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_from(error: ServiceError) -> JSONResponse:
    return problem(error.status, error.code, error.title, error.detail, error.headers)


def is_oip(path: str) -> bool:
    """Whether ``path`` is one of the Open Inference Protocol's (``/v2`` and below)."""
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def oip_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's ``$inference_error_response``; 422 (segserve's bad parameter) is 400."""
    return JSONResponse(
        {"error": detail}, status_code=400 if status == 422 else status, headers=headers
    )


def error_answer(path: str, error: ServiceError) -> JSONResponse:
    """``error`` as the request to ``path`` expects it: OIP error object or problem+json."""
    if is_oip(path):
        return oip_error(error.status, error.detail, error.headers)
    return problem_from(error)


def install_error_handlers(
    app: FastAPI, *, describe_invalid: Callable[[Request], None] | None = None
) -> None:
    """Map every exception that can reach the app to an answer; never leak a stack trace.
    ``describe_invalid`` fills the access record of a request refused with 422 before its
    route ran (model, version and format, where they are valid)."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        note_error(request.scope, exc.code)
        return error_answer(request.scope["path"], exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        error = InvalidParameter(details or "invalid request parameters")
        note_error(request.scope, error.code)
        if describe_invalid is not None:
            describe_invalid(request)
        return error_answer(request.scope["path"], error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        note_error(request.scope, code)
        headers = dict(exc.headers or {})
        if is_oip(request.scope["path"]):
            return oip_error(exc.status_code, str(exc.detail), headers)
        detail = _not_found_detail(request) if exc.status_code == 404 else str(exc.detail)
        return problem(exc.status_code, code, title, detail, headers)


class LastResort:
    """What no handler answers. An exception no handler maps (a bug) is logged with its
    traceback and the request's id, and answered 500 ``internal_error`` without details; a
    request still running when the shutdown timeout ends (the server cancels it) is answered
    503 ``not_ready``, so that the client may retry elsewhere. An answer already under way is
    cut off instead (the server closes the connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        error: ServiceError
        try:
            await self.app(scope, receive, send_and_watch)
            return
        except asyncio.CancelledError:
            # Only the server cancels a request's task: its shutdown timeout has ended. The
            # request ends here, answered; the server is stopping either way.
            error = NotReady("the server stopped before this request was answered")
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            error = ServiceError("The server failed to process the request.")  # 500, no details
        note_error(scope, error.code)
        if not started:
            await error_answer(scope["path"], error)(scope, receive, send)


def _not_found_detail(request: Request) -> str:
    path = request.url.path
    slashless = slashless_route(request)
    if slashless is not None:
        return f"no route {path}: this API has no trailing slashes; use {slashless}"
    return f"no route {path}; see /docs for the API"
