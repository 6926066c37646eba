"""Typed domain errors and the one place that turns any error into problem+json (RFC 9457)."""

from __future__ import annotations

import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("segserve.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ServiceError(Exception):
    """An error a client can act on. Subclasses fix the HTTP status and the stable ``code``."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidImage(ServiceError):
    status, code, title = 400, "invalid_image", "Invalid image"


class Unauthorized(ServiceError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class ModelNotFound(ServiceError):
    status, code, title = 404, "model_not_found", "Model not found"


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class InvalidParameter(ServiceError):
    status, code, title = 422, "invalid_parameter", "Invalid parameter"


class InferenceFailed(ServiceError):
    status, code, title = 500, "inference_failed", "Inference failed"


class Overloaded(ServiceError):
    status, code, title = 503, "overloaded", "Overloaded"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    status, code, title = 503, "not_ready", "Not ready"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceeded(ServiceError):
    status, code, title = 504, "deadline_exceeded", "Deadline exceeded"


class ModelLoadError(Exception):
    """A model in the repository cannot be served; raised at start-up, never to a client."""


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


_HTTP_CODES = {404: ("not_found", "Not found"), 405: ("method_not_allowed", "Method not allowed")}


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception that can reach the app to problem+json; never leak a stack trace."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return problem_from(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return problem_from(InvalidParameter(details or "invalid request parameters"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        return problem(exc.status_code, code, title, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "internal_error",
            "Internal server error",
            "The server failed to process the request.",
        )
