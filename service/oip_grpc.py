"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (ServerLive,
ServerReady, ServerMetadata, ModelMetadata, ModelReady, ModelInfer) on its own port
(``SEGSERVE_GRPC_PORT``), served by ``grpc.aio`` on the event loop that runs uvicorn, so that
both doors share the core, its batchers and worker threads. The model side is
``service.oip_infer``'s, as for REST.

    server = await start_grpc(service, settings, version="0.1.0")  # listening on return
    await server.stop(grace_s)  # refuses new calls, lets running ones finish

Inputs come as ``raw_input_contents`` (or ``contents``, except FP16, which the protocol carries
raw only); outputs always go as ``raw_output_contents``, in the order asked (default: labels,
png, rle). A ``ServiceError`` ends the call with the gRPC status of its HTTP status (``CODES``)
and its detail as the message; anything unexpected is logged and answered INTERNAL without
details. With ``SEGSERVE_API_KEYS`` every call needs ``authorization: Bearer <key>`` metadata.

The messages are generated from ``service/proto/open_inference_grpc.proto`` (KServe's, vendored)
and checked in, so that installing segserve needs no code generation. Regenerate them after
changing the proto with grpcio-tools, in a venv of its own (the dev venv keeps the grpcio that
``tritonclient[grpc]`` 2.69 accepts, < 1.68, older than any grpcio-tools writing protobuf 6)::

    python3 -m venv /tmp/grpc-tools-venv
    /tmp/grpc-tools-venv/bin/pip install grpcio-tools==1.78.0
    cd service/proto && /tmp/grpc-tools-venv/bin/python -m grpc_tools.protoc -I. \\
        --python_out=. --pyi_out=. open_inference_grpc.proto

The handlers are registered by name (``_handlers``) rather than through a generated
``*_pb2_grpc`` module, which would demand a grpcio at least as new as the generator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

from service import metrics, oip_infer
from service.access import AccessRecord
from service.core import Service
from service.errors import ClientClosed, InvalidRequest, ServiceError, Unauthorized
from service.oip_tensors import InputTensor
from service.proto import open_inference_grpc_pb2 as pb
from service.security import ApiKeys, bearer_token
from service.settings import Settings

log = logging.getLogger("segserve.grpc")

SERVICE_NAME = "inference.GRPCInferenceService"
EXTENSIONS: list[str] = []  # binary tensor data, model configuration and repository are REST's
# The gRPC status of each HTTP status a ServiceError carries (as Triton and KServe map theirs).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]


async def start_grpc(service: Service, settings: Settings, version: str) -> grpc.aio.Server:
    """A started gRPC server for ``service`` on ``settings.host``:``settings.grpc_port``.
    A request message may be as large as an HTTP body (``SEGSERVE_MAX_BODY_BYTES``)."""
    keys = ApiKeys(k.get_secret_value() for k in settings.api_keys) if settings.api_keys else None
    doors = InferenceService(service, settings, version)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((_handlers(doors, keys),))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC listening", extra={"port": settings.grpc_port})
    return server


class InferenceService:
    """The RPCs, named as the proto names them; each takes the request message and the call's
    context."""

    def __init__(self, service: Service, settings: Settings, version: str) -> None:
        self.service, self.settings, self.version = service, settings, version

    async def ServerLive(self, request: Any, context: Any) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Message:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Message:
        return pb.ServerMetadataResponse(
            name="segserve", version=self.version, extensions=EXTENSIONS
        )

    async def ModelReady(self, request: Any, context: Any) -> Message:
        """Ready once loaded; an unknown model or version is not ready (no error), as
        tritonclient's ``is_model_ready`` answers False for REST's 404."""
        try:
            oip_infer.served_model(self.service, request.name, request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Message:
        meta = oip_infer.model_metadata(self.service, request.name, request.version)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensors(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[
                tensors(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs
            ],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Message:
        """``oip_infer.run`` for the request's one input; counted in the request metrics as
        the REST door counts its own (the HTTP status of the outcome)."""
        record = AccessRecord(time.monotonic())  # as the HTTP doors keep theirs
        status, reason = 500, None
        metrics.IN_FLIGHT.inc()
        try:
            response = await self._infer(request, context, record)
            status = 200
            return response
        except ServiceError as exc:
            status, reason = exc.status, exc.code
            raise
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            status, reason = ClientClosed.status, ClientClosed.code
            raise
        finally:
            metrics.IN_FLIGHT.dec()
            latency_s = time.monotonic() - record.arrived
            metrics.observe_request(record.model, record.format, status, latency_s, reason)
            log.info(
                "gRPC ModelInfer %d",
                status,
                extra={"path": f"/{SERVICE_NAME}/ModelInfer", "status": status}
                | {"latency_ms": round(latency_s * 1000, 2), "error": reason}
                | {"model": record.model or None, "version": record.version or None}
                | {"format": record.format or None},
            )

    async def _infer(self, request: Any, context: Any, record: AccessRecord) -> Message:
        service = self.service
        name, version = request.model_name, request.model_version
        with oip_infer.leased_model(service, name, version, record.label) as served:
            served.batcher.check_capacity()
            names = oip_infer.check_outputs([out.name for out in request.outputs] or None)
            record.format = oip_infer.format_label(names)
            timeout_s = oip_infer.timeout_s(
                _parameters(request.parameters), service.settings.request_timeout_s
            )
            remaining_s = context.time_remaining()  # the client's gRPC deadline; None: none set
            if remaining_s is not None:
                timeout_s = min(timeout_s, remaining_s)
            tensor = oip_infer.the_input(_inputs(request), served)
            outputs = await oip_infer.run(
                service, served, tensor, names, deadline=record.arrived + timeout_s
            )
        return pb.ModelInferResponse(
            model_name=served.ref.name,
            model_version=str(served.ref.version),
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=out.name, datatype=out.datatype, shape=out.shape
                )
                for out in outputs
            ],
            raw_output_contents=[out.raw for out in outputs],
        )


def _parameters(parameters: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


# The typed ``contents`` field each datatype's listed values travel in.
_CONTENTS = {"BYTES": "bytes_contents", "UINT8": "uint_contents"}


def _inputs(request: Any) -> list[InputTensor]:
    """The request's inputs, each with its raw contents or its listed ``contents``."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    tensors = []
    for i, given in enumerate(request.inputs):
        shape = tuple(given.shape)
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"input '{given.name}': shape {list(shape)} has a negative size")
        if raw:
            tensors.append(InputTensor(given.name, given.datatype, shape, None, raw[i]))
            continue
        if given.datatype == "FP16":
            raise InvalidRequest(
                f"input '{given.name}': FP16 data travels as raw_input_contents only"
            )
        data = list(getattr(given.contents, _CONTENTS.get(given.datatype, "fp32_contents")))
        tensors.append(InputTensor(given.name, given.datatype, shape, data, None))
    return tensors


def _handlers(doors: InferenceService, keys: ApiKeys | None) -> grpc.GenericRpcHandler:
    rpcs: dict[str, tuple[Handler, type[Message]]] = {
        "ServerLive": (doors.ServerLive, pb.ServerLiveRequest),
        "ServerReady": (doors.ServerReady, pb.ServerReadyRequest),
        "ServerMetadata": (doors.ServerMetadata, pb.ServerMetadataRequest),
        "ModelReady": (doors.ModelReady, pb.ModelReadyRequest),
        "ModelMetadata": (doors.ModelMetadata, pb.ModelMetadataRequest),
        "ModelInfer": (doors.ModelInfer, pb.ModelInferRequest),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            name: grpc.unary_unary_rpc_method_handler(
                _answering(handler, keys),
                request_deserializer=message.FromString,
                response_serializer=lambda response: response.SerializeToString(),
            )
            for name, (handler, message) in rpcs.items()
        },
    )


def _answering(handler: Handler, keys: ApiKeys | None) -> Handler:
    """``handler`` behind the API key check, its errors turned into gRPC statuses."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Message:
        try:
            if keys is not None:
                _check_key(keys, context, handler.__name__)
            return await handler(request, context)
        except ServiceError as exc:
            await _abort(context, CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.detail)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # a bug: the client gets no details, the log gets the traceback
            log.exception("unhandled error in gRPC %s", handler.__name__)
            await _abort(
                context, grpc.StatusCode.INTERNAL, "The server failed to process the request."
            )

    return call


def _check_key(keys: ApiKeys, context: grpc.aio.ServicerContext, rpc: str) -> None:
    metadata = dict(context.invocation_metadata() or ())
    authorization = metadata.get("authorization")
    token = bearer_token(authorization.encode() if isinstance(authorization, str) else None)
    if token is None or not keys.is_valid(token):
        # Logged as the HTTP door logs its refusals (service.security), not counted.
        log.warning(
            "refused gRPC %s: %s API key",
            rpc,
            "invalid" if token else "no",
            extra={"client": context.peer()},
        )
        raise Unauthorized("Send a valid API key as 'authorization: Bearer <key>' metadata.")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, detail: str) -> NoReturn:
    await context.abort(code, detail)
    raise AssertionError("context.abort raises")  # pragma: no cover
