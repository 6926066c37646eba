"""The sync and async clients of ``POST /segment`` and ``GET /models``: one request built and
one answer read by shared functions, two retry loops (``time.sleep`` and ``asyncio.sleep``)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image

Format = Literal["png", "rle", "overlay"]
ImageInput = bytes | str | Path
_RETRIED_STATUSES = frozenset({503})
_TIMING = re.compile(r"(\w+);dur=([\d.]+)")


class SegserveError(Exception):
    """A failed request: ``status`` (0 when no answer came), the problem ``code`` (or, with no
    answer, ``timeout`` / ``connection_error``), its ``detail``, and the ``attempts`` it took
    (1 + the retries)."""

    def __init__(self, status: int, code: str, detail: str, attempts: int = 1) -> None:
        super().__init__(f"{status} {code}: {detail}" if status else f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail
        self.attempts = attempts


@dataclass(frozen=True)
class Segmentation:
    """One answer of ``POST /segment``: the body as sent, and what its headers say."""

    content: bytes
    media_type: str
    model: str
    version: int
    timing_ms: dict[str, float] = field(default_factory=dict)
    attempts: int = 1  # 1 + the retries it took

    def labels(self) -> np.ndarray:
        """The (H, W) uint8 class ids of a ``png`` answer."""
        image = Image.open(io.BytesIO(self.content))
        if image.mode != "P":
            raise ValueError("labels() needs a format=png answer (a palette PNG)")
        return np.asarray(image)

    def image(self) -> Image.Image:
        """A ``png`` or ``overlay`` answer as a Pillow image."""
        return Image.open(io.BytesIO(self.content))

    def json(self) -> dict[str, Any]:
        """An ``rle`` answer: ``{"model", "version", "width", "height", "masks": [...]}``."""
        result: dict[str, Any] = json.loads(self.content)
        return result


@dataclass(frozen=True)
class _Settings:
    retries: int
    max_retry_wait_s: float


class Client:
    """A synchronous segserve client. ``timeout_s`` bounds each attempt; a 503 is retried up to
    ``retries`` times after its ``Retry-After`` (at most ``max_retry_wait_s`` each)."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 5,
        max_retry_wait_s: float = 10.0,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout_s, headers=_auth_headers(api_key)
        )
        self._settings = _Settings(retries, max_retry_wait_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> dict[str, Any]:
        """``GET /models``: the served models, their versions and classes. Raises
        SegserveError."""
        response = _send(lambda: self._http.get("/models"))
        _raise_for_problem(response)
        result: dict[str, Any] = response.json()
        return result

    def segment(
        self,
        image: ImageInput,
        *,
        fmt: Format = "png",
        model: str | None = None,
        version: int | None = None,
        alpha: float | None = None,
    ) -> Segmentation:
        """Segment one image (bytes or a path). Raises SegserveError."""
        request = _segment_request(image, fmt, model, version, alpha)
        attempt = 0
        while True:
            attempt += 1
            response = _send(lambda: self._http.post("/segment", **request), attempt)
            wait_s = _retry_wait_s(response, attempt, self._settings)
            if wait_s is None:
                return _segmentation(response, attempt)
            time.sleep(wait_s)


class AsyncClient:
    """The asynchronous twin of ``Client``: the same arguments, ``await`` on each call."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 5,
        max_retry_wait_s: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_s,
            headers=_auth_headers(api_key),
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._settings = _Settings(retries, max_retry_wait_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def models(self) -> dict[str, Any]:
        try:
            response = await self._http.get("/models")
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        _raise_for_problem(response)
        result: dict[str, Any] = response.json()
        return result

    async def segment(
        self,
        image: ImageInput,
        *,
        fmt: Format = "png",
        model: str | None = None,
        version: int | None = None,
        alpha: float | None = None,
    ) -> Segmentation:
        request = _segment_request(image, fmt, model, version, alpha)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post("/segment", **request)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, attempt) from exc
            wait_s = _retry_wait_s(response, attempt, self._settings)
            if wait_s is None:
                return _segmentation(response, attempt)
            await asyncio.sleep(wait_s)


# -- shared: the request, the answer, the retry decision ---------------------------------------
def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _segment_request(
    image: ImageInput, fmt: Format, model: str | None, version: int | None, alpha: float | None
) -> dict[str, Any]:
    """The keyword arguments of ``post("/segment", ...)``: the image as the raw body."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    params: dict[str, str] = {"format": fmt}
    if model is not None:
        params["model"] = model
    if version is not None:
        params["version"] = str(version)
    if alpha is not None:
        params["alpha"] = str(alpha)
    headers = {"Content-Type": "application/octet-stream"}  # the server sniffs the bytes
    return {"content": data, "params": params, "headers": headers}


def _send(call: Any, attempts: int = 1) -> httpx.Response:
    try:
        response: httpx.Response = call()
    except httpx.HTTPError as exc:
        raise _transport_error(exc, attempts) from exc
    return response


def _transport_error(exc: httpx.HTTPError, attempts: int = 1) -> SegserveError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return SegserveError(0, code, str(exc) or type(exc).__name__, attempts)


def _retry_wait_s(response: httpx.Response, attempt: int, settings: _Settings) -> float | None:
    """How long to wait before the next attempt; None when this answer is final."""
    if response.status_code not in _RETRIED_STATUSES or attempt > settings.retries:
        return None
    try:
        wait_s = float(response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: back off exponentially from 0.5 s
        wait_s = 0.5 * 2 ** (attempt - 1)
    return max(0.0, min(wait_s, settings.max_retry_wait_s))


def _raise_for_problem(response: httpx.Response, attempts: int = 1) -> None:
    if response.is_success:
        return
    try:
        problem = response.json()
        code, detail = str(problem["code"]), str(problem["detail"])
    except (ValueError, KeyError, TypeError):
        code, detail = f"http_{response.status_code}", response.text[:200]
    raise SegserveError(response.status_code, code, detail, attempts)


def _segmentation(response: httpx.Response, attempts: int) -> Segmentation:
    _raise_for_problem(response, attempts)
    headers = response.headers
    return Segmentation(
        content=response.content,
        media_type=headers.get("content-type", ""),
        model=headers.get("x-model", ""),
        version=int(headers.get("x-model-version", "0")),
        timing_ms={k: float(v) for k, v in _TIMING.findall(headers.get("server-timing", ""))},
        attempts=attempts,
    )
