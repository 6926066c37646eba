"""Typed domain errors. Each carries its HTTP status and problem ``code`` as data, so the core
raises them without knowing HTTP; ``service.problems`` turns them into problem+json at the edge."""

from __future__ import annotations

from typing import ClassVar


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


class InvalidRequest(ServiceError):
    """An Open Inference Protocol request that breaks the protocol or the model's metadata."""

    status, code, title = 400, "invalid_request", "Invalid request"


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


class RetryLater(ServiceError):
    """A refusal that passes: the answer says when to try again (``Retry-After``)."""

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class Overloaded(RetryLater):
    status, code, title = 503, "overloaded", "Overloaded"


class NotReady(RetryLater):
    status, code, title = 503, "not_ready", "Not ready"


class ClientClosed(ServiceError):
    """The client went away before its answer was ready; logged and counted, never seen."""

    status, code, title = 499, "client_closed", "Client closed request"  # nginx's 499


class DeadlineExceeded(ServiceError):
    status, code, title = 504, "deadline_exceeded", "Deadline exceeded"


class ModelLoadError(Exception):
    """A model in the repository cannot be served; raised at start-up, never to a client."""
