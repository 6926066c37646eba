"""HTTP routes: parse and check the request, call the core, build the response.

``/segment``: body (raw image or multipart part ``image``, size-capped while streaming) ->
``service.pipeline.segment`` -> the encoded mask with ``Server-Timing``. Errors are raised as
the typed errors of ``service.errors``; ``service.problems`` maps them.
"""

from __future__ import annotations

from contextlib import suppress
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics, pipeline
from service.access import SEGMENT_PATH, access_record
from service.control import ModelControl
from service.core import Service
from service.errors import ModelNotFound, NotReady, ServiceError
from service.model_card import Resize
from service.openapi import SEGMENT_REQUEST_BODY, SEGMENT_RESPONSES, problem_doc
from service.pipeline import OutputFormat, SegmentOptions, StageTimes
from service.policies import PolicyRequest
from service.protocol import (
    MULTIPART,
    accepted,
    disconnected,
    image_part,
    media_type,
    negotiate,
    read_body,
)
from service.schemas import (
    Batching,
    InputInfo,
    ModelInfo,
    ModelList,
    Normalization,
    Status,
    UnavailableVersion,
    VersionInfo,
)

router = APIRouter()


class SegmentQuery(BaseModel):
    """The query parameters of ``/segment``: FastAPI documents them from this model, and
    ``SegmentDoor`` validates each request's against it."""

    fmt: OutputFormat | None = Field(
        None,
        alias="format",
        description="`png`, `rle` or `overlay`; default from `Accept` "
        "(`application/json` -> rle, `image/png` or `*/*` -> png), else png",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="overlay opacity (overlay only)")
    model: str | None = Field(
        None, description="model name as listed by GET /models; default: the default model"
    )
    version: int | None = Field(None, ge=1, description="model version; default: the latest")
    resize: Resize | None = Field(
        None,
        description="input policy: `stretch`, `letterbox`, `native` or `tiles`; default: "
        "the model card's (GET /models shows it)",
    )
    max_side: int | None = Field(
        None, ge=16, le=8192, description="native: longest side the model sees"
    )
    tile: int | None = Field(None, ge=16, le=4096, description="tiles: window side")
    overlap: float | None = Field(None, ge=0, le=0.9, description="tiles: fraction windows overlap")
    scale: float | None = Field(None, gt=0, le=4, description="tiles: image scale before tiling")

    @property
    def policy(self) -> PolicyRequest:
        """The input-policy overrides of the card's defaults."""
        return PolicyRequest(self.resize, self.max_side, self.tile, self.overlap, self.scale)


# -- /segment -----------------------------------------------------------------------------------
@router.post(
    SEGMENT_PATH,
    summary="Segment one image",
    responses=SEGMENT_RESPONSES,
    openapi_extra=SEGMENT_REQUEST_BODY,
    tags=["inference"],
)
async def segment(request: Request, query: Annotated[SegmentQuery, Query()]) -> Response:
    # Called by SegmentDoor; FastAPI documents the route from this signature (a docstring here
    # would become the operation's description).
    service: Service = request.app.state.service
    record = access_record(request)
    fmt = query.fmt or negotiate(accepted(request.headers))
    record.format = fmt.value
    # Leased: a version swapped out meanwhile (model control) still answers this request.
    with service.lease(query.model, query.version, resolved=record.label) as served:
        content_type = media_type(request.headers)
        served.batcher.check_capacity()  # a full queue refuses before the upload is read
        body = await read_body(request, service.settings.max_body_bytes)
        data = await image_part(request.headers, body) if content_type == MULTIPART else body
        result = await pipeline.segment(
            service,
            served,
            data,
            SegmentOptions(fmt, query.alpha, query.policy),
            deadline=record.arrived + service.settings.request_timeout_s,
            client_gone=partial(disconnected, request),
        )
    return Response(
        result.content,
        media_type=result.media_type,
        headers={
            "X-Model": served.ref.name,
            "X-Model-Version": str(served.ref.version),
            "Server-Timing": _server_timing(result.times),
        },
    )


class SegmentDoor:
    """``POST /segment`` as a pure ASGI middleware, inside segserve's own middlewares and ahead
    of FastAPI's exception middleware, routing and parameter solving (together ~0.3 ms of
    event-loop CPU per request on the 2-core bench machine; docs/PERFORMANCE.md). It calls the
    documented route's own function with the query validated against ``SegmentQuery``, and
    answers errors with the app's registered handlers (``service.problems``), as the route would;
    anything else propagates as from a route. Other requests pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != SEGMENT_PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        handlers = request.app.exception_handlers
        try:
            query = SegmentQuery.model_validate(request.query_params)
        except ValidationError as exc:
            # FastAPI's own error for a query parameter: located under "query".
            invalid = RequestValidationError(
                [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
            )
            response = await handlers[RequestValidationError](request, invalid)
        else:
            try:
                response = await segment(request, query)
            except ServiceError as exc:
                response = await handlers[ServiceError](request, exc)
        await response(scope, receive, send)


def describe_invalid_segment(request: Request) -> None:
    """Fill the access record of a ``/segment`` request refused with 422 before the route ran:
    the model, version and format it would have been served with, where each is valid on its
    own (a named model is kept when the version named beside it is not)."""
    if request.url.path != SEGMENT_PATH:
        return
    record, query = access_record(request), request.query_params
    with suppress(ValueError):
        fmt = query["format"] if "format" in query else negotiate(accepted(request.headers))
        record.format = OutputFormat(fmt).value
    repository = request.app.state.service.repository
    try:
        ref = repository.resolve(query.get("model"), None)
    except ServiceError:
        return
    record.model = ref.name
    with suppress(ValueError, ServiceError):
        version = int(query["version"]) if "version" in query else None
        record.version = str(repository.resolve(ref.name, version).version)


def _server_timing(times: StageTimes) -> str:
    return (
        f"decode;dur={times.decode_s * 1000:.2f}, queue;dur={times.queue_s * 1000:.2f}, "
        f"infer;dur={times.infer_s * 1000:.2f}, encode;dur={times.encode_s * 1000:.2f}"
    )


# -- models, health, metrics --------------------------------------------------------------------
@router.get("/models", summary="All served models", tags=["models"])
async def list_models(request: Request) -> ModelList:
    service: Service = request.app.state.service
    service.require_loaded()
    return ModelList(
        default=service.repository.default,
        models=[_describe(request, name) for name in service.repository.versions],
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
    service.require_loaded()
    return _describe(request, name)


def _describe(request: Request, name: str) -> ModelInfo:
    service: Service = request.app.state.service
    control: ModelControl = request.app.state.control
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
                normalization=None
                if card.input.dtype == "uint8"
                else Normalization(mean=card.input.mean, std=card.input.std),
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
        unavailable_versions=[
            UnavailableVersion(version=state.version, reason=state.reason)
            for state in control.unavailable(name)
        ],
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
        raise NotReady(service.not_ready_reason())
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
