"""The Open Inference Protocol's REST routes (KServe V2, as Triton and KServe serve them): health,
server and model metadata, the Triton-style model config that ``perf_analyzer`` reads, and
``infer``: the body read by ``service.oip_wire``, the model side in ``service.oip_infer``, which
the gRPC door (``service.oip_grpc``) shares.

Errors are raised as ``service.errors``; ``service.problems`` answers them as ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import oip_infer, oip_wire
from service.access import access_record
from service.core import Service
from service.errors import InvalidRequest, ServiceError
from service.oip_infer import (
    DTYPES,
    IMAGE,
    INPUT,
    OUTPUTS,
    PLATFORM,
    SCORES,
    model_version,
    served_model,
)
from service.protocol import disconnected, read_body

router = APIRouter(prefix="/v2", include_in_schema=False)  # the protocol's own spec documents it

# Really supported: binary tensor data, GET .../config (Triton's model configuration) and
# /v2/repository (Triton's model repository: ``service.repository_api``).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]


# -- health and metadata ------------------------------------------------------------------------
@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "segserve", "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def server_ready(request: Request) -> Response:
    service: Service = request.app.state.service
    if not service.ready:
        body = {"ready": False, "error": service.not_ready_reason()}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"ready": True})


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Any:
    return dataclasses.asdict(oip_infer.model_metadata(request.app.state.service, name, version))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    service: Service = request.app.state.service
    ref = service.repository.resolve(name, model_version(version))
    if not service.loaded:
        body = {"name": name, "ready": False, "error": service.not_ready_reason()}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"name": ref.name, "ready": True})


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> Any:
    """Triton's model configuration (model_config.proto as JSON), the fields its tools read.
    Batched dims exclude the batch dimension; a BYTES element is dims [1] reshaped to []."""
    served = served_model(request.app.state.service, name, version)
    settings = request.app.state.service.settings
    spec = served.card.input
    scalar = {"dims": [1], "reshape": {"shape": []}}
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": settings.max_batch_size,
        "input": [
            {"name": IMAGE, "data_type": "TYPE_STRING", "optional": True, **scalar},
            {
                "name": INPUT,
                "data_type": f"TYPE_{DTYPES[spec.dtype]}",
                "dims": [3, spec.height, spec.width],
                "optional": True,
            },
        ],
        "output": [
            {"name": "labels", "data_type": "TYPE_UINT8", "dims": [-1, -1]},
            {"name": "png", "data_type": "TYPE_STRING", **scalar},
            {"name": "rle", "data_type": "TYPE_STRING", **scalar},
            {
                "name": SCORES,
                "data_type": "TYPE_FP32",
                "dims": [served.card.num_classes, spec.height, spec.width],
            },
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(settings.max_batch_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": settings.max_queue,
                "default_timeout_microseconds": round(settings.request_timeout_ms * 1000),
            },
        },
        "instance_group": [
            {
                "count": served.pool.size,
                "kind": "KIND_CPU" if served.pool.provider == "CPU" else "KIND_GPU",
            }
        ],
    }


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """One ``$inference_request`` in, its ``$inference_response`` out (JSON, or JSON followed by
    binary data with ``Inference-Header-Content-Length``)."""
    service: Service = request.app.state.service
    record = access_record(request)
    try:
        with oip_infer.leased_model(service, name, version, record.label) as served:
            served.batcher.check_capacity()  # a full queue refuses before the upload is read
            body = await read_body(request, service.settings.max_body_bytes)
            parsed = oip_wire.read_request(
                body, request.headers.get("inference-header-content-length")
            )
            binary = _binary_outputs(parsed)
            record.format = oip_infer.format_label(binary)
            timeout_s = oip_infer.timeout_s(parsed.parameters, service.settings.request_timeout_s)
            tensor = oip_infer.the_input(parsed.inputs, served)
            gone = asyncio.ensure_future(disconnected(request))  # one watcher for all the images

            def client_gone() -> Awaitable[None]:
                return asyncio.shield(gone)

            try:
                outputs = await oip_infer.run(
                    service,
                    served,
                    tensor,
                    tuple(binary),
                    deadline=record.arrived + timeout_s,
                    client_gone=client_gone,
                )
            finally:
                gone.cancel()
    except ServiceError as exc:
        record.error_code = exc.code
        raise
    head: dict[str, Any] = {"model_name": served.ref.name, "model_version": str(served.ref.version)}
    if parsed.id is not None:
        head["id"] = parsed.id
    content, header_length = oip_wire.write_response(head, outputs, binary)
    headers = {"X-Model": served.ref.name, "X-Model-Version": str(served.ref.version)}
    if header_length is None:
        return Response(content, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(header_length)
    return Response(content, media_type="application/octet-stream", headers=headers)


def _binary_outputs(parsed: oip_wire.Request) -> dict[str, bool]:
    """Output name -> whether it goes as binary data. No ``outputs`` (or an empty list, as
    gRPC reads one): all of them (``png`` only when binary: a PNG is not text, so a JSON
    answer cannot carry it)."""
    default_binary = parsed.parameters.get("binary_data_output") is True
    if not parsed.outputs:
        return {n: default_binary for n in OUTPUTS if default_binary or n != "png"}
    oip_infer.check_outputs([out.name for out in parsed.outputs])
    wanted: dict[str, bool] = {}
    for out in parsed.outputs:
        binary = out.parameters.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output '{out.name}': binary_data must be true or false")
        if out.name == "png" and not binary:
            raise InvalidRequest(
                "output 'png' holds PNG files, which JSON cannot carry: request it with "
                'parameters {"binary_data": true}'
            )
        wanted[out.name] = binary
    return wanted
