"""HTTP routes: parse and check the request, hand the work to the core, build the response.

``/segment``: body (raw image or multipart part ``image``, size-capped while streaming) ->
decode + prepare (worker thread) -> the model's batcher -> labels resized back and encoded
(worker thread). Errors are raised as the typed errors of ``service.errors``, which map them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service import imaging, masks, metrics
from service.access import access_record
from service.errors import (
    PROBLEM_MEDIA_TYPE,
    InvalidImage,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    from service.app import ServedModel, Service
    from service.model_card import ModelCard

router = APIRouter()

RAW_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff",
                   "image/gif", "application/octet-stream")
_ALIASES = {"image/jpg": "image/jpeg", "image/x-ms-bmp": "image/bmp"}
MULTIPART = "multipart/form-data"
CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never seen by anyone


class OutputFormat(StrEnum):
    png = "png"
    rle = "rle"
    overlay = "overlay"


# Accept media range -> format, for requests without ?format=.
_ACCEPTS = {"application/json": OutputFormat.rle, "image/png": OutputFormat.png,
            "image/*": OutputFormat.png, "*/*": OutputFormat.png}


# ---- documentation-only schemas (OpenAPI) -------------------------------------------------------
class Rle(BaseModel):
    size: tuple[int, int]
    counts: str


class ClassMask(BaseModel):
    class_id: int
    label: str
    color: tuple[int, int, int]
    area: int
    rle: Rle


class RleResult(BaseModel):
    model: str
    version: int
    width: int
    height: int
    masks: list[ClassMask]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": Problem.model_json_schema()}}}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: raw bytes with its image Content-Type (application/"
                       "octet-stream is sniffed), or multipart/form-data with a part `image`.",
        "content": {
            **{media: _BINARY for media in RAW_MEDIA_TYPES},
            MULTIPART: {"schema": {"type": "object", "required": ["image"],
                                   "properties": {"image": {"type": "string",
                                                            "format": "binary"}}}},
        },
    }
}
_SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": RleResult,
        "description": "`png`: palette PNG, pixel value = class id; `overlay`: the image with "
                       "class colours blended in (image/png); `rle`: COCO RLE per class "
                       "(application/json).",
        "content": {"image/png": _BINARY},
        "headers": {
            "X-Model": {"description": "model name", "schema": {"type": "string"}},
            "X-Model-Version": {"description": "model version", "schema": {"type": "integer"}},
            "Server-Timing": {"description": "decode, queue, infer, encode durations (ms)",
                              "schema": {"type": "string"}},
            "X-Request-ID": {"description": "the request id (echoed or generated)",
                             "schema": {"type": "string"}},
        },
    },
    400: _problem("`invalid_image`: empty body, not a decodable image, truncated or corrupt"),
    401: _problem("`unauthorized`: API keys are configured and none valid was sent"),
    404: _problem("`model_not_found`: unknown model or version"),
    413: _problem("`payload_too_large`: body over SEGSERVE_MAX_BODY_BYTES or image over "
                  "SEGSERVE_MAX_PIXELS"),
    415: _problem("`unsupported_media_type`: not an image, multipart or octet-stream"),
    422: _problem("`invalid_parameter`: bad query parameter"),
    500: _problem("`inference_failed` / `internal_error`"),
    503: _problem("`overloaded` (queue full; Retry-After) or `not_ready` (loading, draining)"),
    504: _problem("`deadline_exceeded`: waited longer than SEGSERVE_REQUEST_TIMEOUT_MS"),
}


# ---- /segment -----------------------------------------------------------------------------------
@router.post(
    "/segment",
    summary="Segment one image",
    responses=_SEGMENT_RESPONSES,
    openapi_extra=_SEGMENT_BODY,
    tags=["inference"],
)
async def segment(
    request: Request,
    output: Annotated[OutputFormat | None, Query(
        alias="format", description="`png`, `rle` or `overlay`; default from `Accept` "
        "(`application/json` -> rle, `image/png` or `*/*` -> png), else png")] = None,
    alpha: Annotated[float, Query(ge=0, le=1, description="overlay opacity (overlay only)")] = 0.5,
    model: Annotated[str | None, Query(
        description="model name as listed by GET /models; default: the default model")] = None,
    version: Annotated[int | None, Query(
        ge=1, description="model version; default: the latest")] = None,
) -> Response:
    service: Service = request.app.state.service
    record = access_record(request)
    fmt = output or negotiate(request.headers.get("accept"))
    record.format = fmt.value
    try:
        served = service.model(model, version)
        # Labelled only once resolved: a client's made-up names never become metric labels.
        record.model, record.version = served.ref.name, str(served.ref.version)
        media_type = _media_type(request.headers)
        body = await _read_body(request, service.settings.max_body_bytes)
        data = await _image_bytes(request.headers, body) if media_type == MULTIPART else body
        return await _segment(request, service, served, data, fmt, alpha)
    except ServiceError as exc:
        record.error_code = exc.code
        raise


async def _segment(
    request: Request, service: Service, served: ServedModel, data: bytes,
    fmt: OutputFormat, alpha: float,
) -> Response:
    card, settings, ref = served.card, service.settings, served.ref
    t0 = time.perf_counter()
    # png/rle only need the model's input size, so a big JPEG is decoded at a reduced scale.
    min_size = None if fmt is OutputFormat.overlay else (card.input.width, card.input.height)
    decoded, x = await service.run_cpu(_decode, data, card, settings.max_pixels, min_size)
    t1 = time.perf_counter()

    deadline = access_record(request).arrived + settings.request_timeout_s
    done = await _unless_disconnected(request, served.batcher.submit(x, deadline=deadline))
    if done is None:
        access_record(request).error_code = "client_closed"
        return Response(status_code=CLIENT_CLOSED)
    metrics.QUEUE_WAIT.labels(ref.name, str(ref.version)).observe(done.queued_s)

    t2 = time.perf_counter()
    content = await service.run_cpu(_encode, fmt, done.value, decoded, served, alpha)
    t3 = time.perf_counter()
    timing = (f"decode;dur={(t1 - t0) * 1000:.2f}, queue;dur={done.queued_s * 1000:.2f}, "
              f"infer;dur={done.run_s * 1000:.2f}, encode;dur={(t3 - t2) * 1000:.2f}")
    return Response(
        content,
        media_type="application/json" if fmt is OutputFormat.rle else "image/png",
        headers={"X-Model": ref.name, "X-Model-Version": str(ref.version),
                 "Server-Timing": timing},
    )


def _decode(data: bytes, card: ModelCard, max_pixels: int,
            min_size: tuple[int, int] | None) -> tuple[imaging.DecodedImage, np.ndarray]:
    decoded = imaging.decode(data, max_pixels=max_pixels, min_size=min_size)
    return decoded, imaging.prepare(decoded.image, card.input)


def _encode(fmt: OutputFormat, labels: np.ndarray, decoded: imaging.DecodedImage,
            served: ServedModel, alpha: float) -> bytes:
    card = served.card
    full = masks.resize_labels(labels, decoded.size)
    if fmt is OutputFormat.png:
        return masks.encode_png(full, card.palette())
    if fmt is OutputFormat.rle:
        width, height = decoded.size
        return orjson.dumps({"model": served.ref.name, "version": served.ref.version,
                             "width": width, "height": height,
                             "masks": masks.encode_rle(full, card.classes)})
    image = decoded.image
    if image.size != decoded.size:  # decoders may hand back a reduced scale; blend at full size
        image = image.resize(decoded.size)
    return masks.encode_overlay(image, full, card.palette(), alpha)


def negotiate(accept: str | None) -> OutputFormat:
    """The format the ``Accept`` header prefers (highest q; ties: first listed), else png."""
    best, best_q = OutputFormat.png, 0.0
    for entry in (accept or "").split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        fmt = _ACCEPTS.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = fmt, q
    return best


def _media_type(headers: Headers) -> str:
    raw = headers.get("content-type")
    if raw is None:
        return "application/octet-stream"  # no claim at all: sniff the bytes
    media = raw.split(";", 1)[0].strip().lower()
    media = _ALIASES.get(media, media)
    if media in RAW_MEDIA_TYPES or media == MULTIPART:
        return media
    raise UnsupportedMediaType(
        f"Content-Type '{media}' is not accepted: send the image as {', '.join(RAW_MEDIA_TYPES)}"
        f", or as the part 'image' of {MULTIPART}"
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # chunked or lying Content-Length: count what actually arrives
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
    return bytes(body)


async def _image_bytes(headers: Headers, body: bytes) -> bytes:
    """The part ``image`` of a multipart body already read (and size-capped) in memory."""

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, replay(), max_files=4, max_fields=16,
                             max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidImage(f"the multipart body cannot be parsed: {exc.message}") from exc
    try:
        part = form.get("image")
        if not isinstance(part, UploadFile):
            raise InvalidImage(
                "the multipart body has no file part named 'image' (curl -F image=@photo.jpg)"
            )
        return await part.read()
    finally:
        await form.close()


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """Await ``work`` unless the client goes away first: then cancel it (the batcher frees the
    request's place in its queue) and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _disconnected(request: Request) -> None:
    # The body has been read: the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- models, health, metrics --------------------------------------------------------------------
@router.get("/models", summary="All served models", tags=["models"])
async def list_models(request: Request) -> dict[str, Any]:
    service: Service = request.app.state.service
    _require_loaded(service)
    return {"default": service.repository.default,
            "models": [_describe(service, name) for name in service.repository.versions]}


@router.get("/models/{name}", summary="One served model", tags=["models"],
            responses={404: _problem("`model_not_found`"), 503: _problem("`not_ready`")})
async def get_model(
    request: Request, name: Annotated[str, Path(description="model name")]
) -> dict[str, Any]:
    service: Service = request.app.state.service
    if name not in service.repository.versions:
        raise ModelNotFound(f"no model named '{name}' "
                            f"(available: {', '.join(service.repository.versions)})")
    _require_loaded(service)
    return _describe(service, name)


def _require_loaded(service: Service) -> None:
    if not service.loaded:
        raise NotReady("models are still loading")


def _describe(service: Service, name: str) -> dict[str, Any]:
    settings = service.settings
    versions = []
    for ref in service.repository.versions[name].values():
        served = service.models[ref.key]
        card = served.card
        versions.append({
            "version": ref.version,
            "description": card.description,
            "classes": [c.model_dump() for c in card.classes],
            "input": card.input.model_dump(include={"height", "width", "layout", "channels",
                                                     "dtype", "resize"}),
            "normalization": {"mean": card.input.mean, "std": card.input.std,
                              "formula": "(pixel / 255 - mean) / std"},
            "output": card.output.kind,
            "provider": served.pool.provider,
            "sessions": served.pool.size,
            "training": card.training.model_dump() if card.training else None,
        })
    return {
        "name": name,
        "default": name == service.repository.default,
        "latest_version": service.repository.latest(name).version,
        "versions": versions,
        "batching": {"max_batch_size": settings.max_batch_size,
                     "max_batch_delay_ms": settings.max_batch_delay_ms,
                     "max_queue": settings.max_queue,
                     "request_timeout_ms": settings.request_timeout_ms},
    }


@router.get("/healthz", summary="Liveness: 200 while the process runs", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 once every model is loaded and warmed up",
            tags=["health"], responses={503: _problem("`not_ready`: loading or draining")})
async def readyz(request: Request) -> dict[str, str]:
    service: Service = request.app.state.service
    if not service.ready:
        raise NotReady("draining" if service.draining else "models are still loading")
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics (text exposition)", tags=["health"],
            response_class=PlainTextResponse)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
