"""HTTP routes: parse and check the request, hand the work to the core, build the response.

``/segment``: body (raw image or multipart part ``image``, size-capped while streaming) ->
decode + prepare (worker thread) -> the model's batcher -> labels resized back and encoded
(worker thread). Errors are raised as the typed errors of ``service.errors``, which map them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import numpy as np
import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse

from service import imaging, masks, metrics
from service.access import access_record
from service.errors import ModelNotFound, NotReady, ServiceError
from service.openapi import SEGMENT_REQUEST_BODY, SEGMENT_RESPONSES, problem_doc
from service.protocol import (
    MULTIPART,
    OutputFormat,
    image_part,
    media_type,
    negotiate,
    read_body,
    unless_disconnected,
)
from service.schemas import (
    Batching,
    InputInfo,
    ModelInfo,
    ModelList,
    Normalization,
    Status,
    VersionInfo,
)

if TYPE_CHECKING:
    from service.app import ServedModel, Service
    from service.model_card import ModelCard

router = APIRouter()

CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, never seen by anyone


# -- /segment -----------------------------------------------------------------------------------
@router.post(
    "/segment",
    summary="Segment one image",
    responses=SEGMENT_RESPONSES,
    openapi_extra=SEGMENT_REQUEST_BODY,
    tags=["inference"],
)
async def segment(
    request: Request,
    output: Annotated[
        OutputFormat | None,
        Query(
            alias="format",
            description="`png`, `rle` or `overlay`; default from `Accept` "
            "(`application/json` -> rle, `image/png` or `*/*` -> png), else png",
        ),
    ] = None,
    alpha: Annotated[float, Query(ge=0, le=1, description="overlay opacity (overlay only)")] = 0.5,
    model: Annotated[
        str | None,
        Query(description="model name as listed by GET /models; default: the default model"),
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, description="model version; default: the latest")
    ] = None,
) -> Response:
    service: Service = request.app.state.service
    record = access_record(request)
    fmt = output or negotiate(request.headers.get("accept"))
    record.format = fmt.value
    try:
        served = service.model(model, version)
        # Labelled only once resolved: a client's made-up names never become metric labels.
        record.model, record.version = served.ref.name, str(served.ref.version)
        content_type = media_type(request.headers)
        served.batcher.check_capacity()  # a full queue refuses before the upload is decoded
        body = await read_body(request, service.settings.max_body_bytes)
        data = await image_part(request.headers, body) if content_type == MULTIPART else body
        return await _segment(request, service, served, data, fmt, alpha)
    except ServiceError as exc:
        record.error_code = exc.code
        raise


async def _segment(
    request: Request,
    service: Service,
    served: ServedModel,
    data: bytes,
    fmt: OutputFormat,
    alpha: float,
) -> Response:
    card, settings, ref = served.card, service.settings, served.ref
    t0 = time.perf_counter()
    # png/rle only need the model's input size, so a big JPEG is decoded at a reduced scale.
    min_size = None if fmt is OutputFormat.overlay else (card.input.width, card.input.height)
    deadline = access_record(request).arrived + settings.request_timeout_s
    with served.batcher.announce():  # the batcher may wait for this image, not for nothing
        decoded, x = await service.run_cpu(_decode, data, card, settings.max_pixels, min_size)
        t1 = time.perf_counter()
        queued = served.batcher.enqueue(x, deadline=deadline)
    done = await unless_disconnected(request, queued)
    if done is None:
        access_record(request).error_code = "client_closed"
        return Response(status_code=CLIENT_CLOSED)
    served.queue_wait.observe(done.queued_s)

    t2 = time.perf_counter()
    content = await service.run_cpu(_encode, fmt, done.value, decoded, served, alpha)
    t3 = time.perf_counter()
    timing = (
        f"decode;dur={(t1 - t0) * 1000:.2f}, queue;dur={done.queued_s * 1000:.2f}, "
        f"infer;dur={done.run_s * 1000:.2f}, encode;dur={(t3 - t2) * 1000:.2f}"
    )
    return Response(
        content,
        media_type="application/json" if fmt is OutputFormat.rle else "image/png",
        headers={"X-Model": ref.name, "X-Model-Version": str(ref.version), "Server-Timing": timing},
    )


def _decode(
    data: bytes, card: ModelCard, max_pixels: int, min_size: tuple[int, int] | None
) -> tuple[imaging.DecodedImage, np.ndarray]:
    decoded = imaging.decode(data, max_pixels=max_pixels, min_size=min_size)
    return decoded, imaging.prepare(decoded.image, card.input)


def _encode(
    fmt: OutputFormat,
    labels: np.ndarray,
    decoded: imaging.DecodedImage,
    served: ServedModel,
    alpha: float,
) -> bytes:
    card, size = served.card, decoded.size
    # png and rle scale the model-sized labels to the image's size as they encode.
    if fmt is OutputFormat.png:
        return masks.encode_png(labels, card.palette(), size=size)
    if fmt is OutputFormat.rle:
        width, height = size
        return orjson.dumps(
            {
                "model": served.ref.name,
                "version": served.ref.version,
                "width": width,
                "height": height,
                "masks": masks.encode_rle(labels, card.classes, size=size),
            }
        )
    image = decoded.image
    if image.size != size:  # decoders may hand back a reduced scale; blend at full size
        image = image.resize(size)
    return masks.encode_overlay(image, masks.resize_labels(labels, size), card.palette(), alpha)


# -- models, health, metrics --------------------------------------------------------------------
@router.get("/models", summary="All served models", tags=["models"])
async def list_models(request: Request) -> ModelList:
    service: Service = request.app.state.service
    _require_loaded(service)
    return ModelList(
        default=service.repository.default,
        models=[_describe(service, name) for name in service.repository.versions],
    )


@router.get(
    "/models/{name}",
    summary="One served model",
    tags=["models"],
    responses={404: problem_doc("`model_not_found`"), 503: problem_doc("`not_ready`")},
)
async def get_model(
    request: Request, name: Annotated[str, Path(description="model name")]
) -> ModelInfo:
    service: Service = request.app.state.service
    if name not in service.repository.versions:
        raise ModelNotFound(
            f"no model named '{name}' (available: {', '.join(service.repository.versions)})"
        )
    _require_loaded(service)
    return _describe(service, name)


def _require_loaded(service: Service) -> None:
    if not service.loaded:
        raise NotReady("models are still loading")


def _describe(service: Service, name: str) -> ModelInfo:
    settings = service.settings
    versions = []
    for ref in service.repository.versions[name].values():
        served = service.models[ref.key]
        card = served.card
        versions.append(
            VersionInfo(
                version=ref.version,
                description=card.description,
                classes=card.classes,
                input=InputInfo.model_validate(card.input, from_attributes=True),
                normalization=Normalization(mean=card.input.mean, std=card.input.std),
                output=card.output.kind,
                provider=served.pool.provider,
                sessions=served.pool.size,
                training=card.training,
            )
        )
    return ModelInfo(
        name=name,
        default=name == service.repository.default,
        latest_version=service.repository.latest(name).version,
        versions=versions,
        batching=Batching(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            max_queue=settings.max_queue,
            request_timeout_ms=settings.request_timeout_ms,
        ),
    )


@router.get("/healthz", summary="Liveness: 200 while the process runs", tags=["health"])
async def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: 200 once every model is loaded and warmed up",
    tags=["health"],
    responses={503: problem_doc("`not_ready`: loading or draining")},
)
async def readyz(request: Request) -> Status:
    service: Service = request.app.state.service
    if not service.ready:
        raise NotReady("draining" if service.draining else "models are still loading")
    return Status(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition)",
    tags=["health"],
    response_class=PlainTextResponse,
)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
