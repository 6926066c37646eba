"""Who may call the service, how much it will hold for them, and what every answer carries.

``RequestIdMiddleware``, the outermost of segserve's middlewares: every answer (errors
included) carries ``X-Request-ID``: the client's own id when it is short and plain, else a fresh
one; the id is also in a context variable so log lines can name the request. Every answer also
gets ``nosniff``.

``install_security(app, settings)`` adds three more pure-ASGI middlewares, outermost first,
inside the access log (``service.access``), which records their refusals:

1. ``CORSMiddleware`` (Starlette) — only when ``SEGSERVE_CORS_ORIGINS`` names origins. It sits
   outside authentication so that preflights (which never carry credentials) are answered and a
   browser can read a 401.
2. ``ApiKeyMiddleware`` — only when ``SEGSERVE_API_KEYS`` is set: ``Authorization: Bearer <key>``
   on every path except ``SEGSERVE_AUTH_PUBLIC_PATHS`` (probes and metrics by default) and the
   page (``/``, ``/page/…``: files that hold no data; its calls to the API carry a key).
3. ``BodyBudgetMiddleware`` — bounds the request bodies held at once: each upload reserves its
   declared size (the body limit when it declares none) from ``SEGSERVE_MAX_INFLIGHT_BODY_BYTES``
   and is refused with 503 ``overloaded`` when the budget is spent. Without it, memory grows
   with the number of concurrent uploads, which the client controls.

Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task per request and the request body is
never touched here, so streaming uploads and their size limit stay with the API layer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access import note_error
from service.context import request_id_var
from service.errors import Overloaded, Unauthorized
from service.problems import error_answer
from service.settings import Settings

log = logging.getLogger("segserve.security")

REQUEST_ID_HEADER = "X-Request-ID"
# A client-supplied id is echoed only if it cannot smuggle anything into headers or log lines.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Answers a browser script may read besides the CORS-safelisted ones.
_EXPOSED_HEADERS = ["X-Model", "X-Model-Version", "Server-Timing", REQUEST_ID_HEADER, "Retry-After"]


def install_security(
    app: FastAPI,
    settings: Settings,
    *,
    public_paths: Iterable[str] = (),
    public_prefixes: Iterable[str] = (),
) -> None:
    """Wire the body budget, API keys and CORS into ``app`` per ``settings``.
    ``public_paths`` (exact) and ``public_prefixes`` are served without a key besides
    ``settings.auth_public_paths``: the app's own pages that hold no data."""
    # add_middleware wraps what is already there: the last one added is the outermost.
    app.add_middleware(
        BodyBudgetMiddleware,
        budget_bytes=settings.max_inflight_body_bytes,
        max_body_bytes=settings.max_body_bytes,
    )
    if settings.api_keys:
        app.add_middleware(
            ApiKeyMiddleware,
            keys=[key.get_secret_value() for key in settings.api_keys],
            public_paths=(*settings.auth_public_paths, *public_paths),
            public_prefixes=public_prefixes,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", REQUEST_ID_HEADER],
            expose_headers=_EXPOSED_HEADERS,
            allow_credentials=False,  # bearer keys travel in a header, never in cookies
            max_age=600,
        )


class ApiKeyMiddleware:
    """Refuse requests without a valid ``Authorization: Bearer <key>`` with 401 problem+json."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Iterable[str],
        public_paths: Iterable[str],
        public_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._keys = ApiKeys(keys)
        self._public_paths = frozenset(public_paths)
        self._public_prefixes = tuple(public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = bearer_token(_header(scope, b"authorization"))
        if token is not None and self._keys.is_valid(token):
            await self.app(scope, receive, send)
            return
        # Beside the access line: which key was missing, and the client it came from.
        client = scope.get("client")
        log.warning(
            "refused %s %s: %s API key",
            scope["method"],
            scope["path"],
            "invalid" if token else "no",
            extra={"client": client[0] if client else None},
        )
        note_error(scope, Unauthorized.code)
        if token is None:
            error = Unauthorized(
                "Send an API key as 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": 'Bearer realm="segserve"'},
            )
        else:
            error = Unauthorized(
                "The API key is not valid.",
                headers={"WWW-Authenticate": 'Bearer realm="segserve", error="invalid_token"'},
            )
        await error_answer(scope["path"], error)(scope, receive, send)

    def _is_public(self, path: str) -> bool:
        return path in self._public_paths or path.startswith(self._public_prefixes)


class ApiKeys:
    """The configured API keys (at least one); ``is_valid`` tells a good token from others."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Compare fixed-length digests so neither a key's content nor its length leaks by timing.
        self._key_digests = [_digest(key.encode()) for key in keys]
        if not self._key_digests:
            raise ValueError("ApiKeys needs at least one key")

    def is_valid(self, token: bytes) -> bool:
        digest = _digest(token)
        valid = False
        for key_digest in self._key_digests:  # no early exit: the time does not say which key
            valid |= hmac.compare_digest(digest, key_digest)
        return valid


class BodyBudgetMiddleware:
    """Admit a request with a body only while the bodies being held fit in ``budget_bytes``."""

    def __init__(self, app: ASGIApp, *, budget_bytes: int, max_body_bytes: int) -> None:
        self.app = app
        self.budget_bytes = budget_bytes
        self.max_body_bytes = max_body_bytes
        self.reserved_bytes = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = self._reservation(scope) if scope["type"] == "http" else 0
        if size == 0:
            await self.app(scope, receive, send)
            return
        if self.reserved_bytes + size > self.budget_bytes:
            log.warning(
                "refused %s %s: %d body bytes already held, %d more asked",
                scope["method"],
                scope["path"],
                self.reserved_bytes,
                size,
            )
            note_error(scope, Overloaded.code, rejection="body_budget")
            error = Overloaded(
                f"the server is holding too many uploads ({self.reserved_bytes} bytes); retry later"
            )
            await error_answer(scope["path"], error)(scope, receive, send)
            return
        self.reserved_bytes += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.reserved_bytes -= size

    def _reservation(self, scope: Scope) -> int:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            # The API refuses a declared size over the limit before reading a byte of it.
            return 0 if int(declared) > self.max_body_bytes else int(declared)
        if _header(scope, b"transfer-encoding") is not None:
            return self.max_body_bytes  # chunked: may grow to the limit
        return 0


class RequestIdMiddleware:
    """Give every request an id, echo it on the answer and expose it to logging."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = _header(scope, b"x-request-id")
        if supplied is not None and _SAFE_REQUEST_ID.fullmatch(supplied):
            request_id = supplied.decode("ascii")
        else:
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The key in an ``Authorization: Bearer <key>`` value; None for any other value."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token
