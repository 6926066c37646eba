"""The Open Inference Protocol's REST routes (KServe V2, as Triton and KServe serve them): health,
server and model metadata, the Triton-style model config that ``perf_analyzer`` reads, and
``infer`` (``service.oip_infer``).

A served model has two optional inputs (a request sends exactly one) and three outputs:

    image   BYTES [N]            encoded images, decoded as /segment decodes them
    input   FP32|FP16 [N,3,H,W]  images the client prepared itself, at the model's input size
    labels  UINT8 [N,H,W]        class ids at each image's size (one size per request)
    png     BYTES [N]            the palette PNG of /segment?format=png
    rle     BYTES [N]            the JSON text of /segment?format=rle

Errors are raised as ``service.errors``; ``service.problems`` answers them as ``{"error": ...}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import oip_infer
from service.core import Service
from service.oip_infer import IMAGE, INPUT, model_version, served_model

router = APIRouter(prefix="/v2", include_in_schema=False)  # the protocol's own spec documents it
for _path in ("/models/{name}/infer", "/models/{name}/versions/{version}/infer"):
    router.add_api_route(_path, oip_infer.infer, methods=["POST"])

PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
# Really supported: binary tensor data, and GET .../config (Triton's model configuration).
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
_DTYPES = {"float32": "FP32", "float16": "FP16"}


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
    served = served_model(request.app.state.service, name, version)
    spec = served.card.input
    shape = [-1, 3, spec.height, spec.width]
    return {
        "name": name,
        "versions": _versions(request, name),
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT, "datatype": _DTYPES[spec.dtype], "shape": shape},
        ],
        "outputs": [
            {"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]},
            {"name": "png", "datatype": "BYTES", "shape": [-1]},
            {"name": "rle", "datatype": "BYTES", "shape": [-1]},
        ],
    }


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
                "data_type": f"TYPE_{_DTYPES[spec.dtype]}",
                "dims": [3, spec.height, spec.width],
                "optional": True,
            },
        ],
        "output": [
            {"name": "labels", "data_type": "TYPE_UINT8", "dims": [-1, -1]},
            {"name": "png", "data_type": "TYPE_STRING", **scalar},
            {"name": "rle", "data_type": "TYPE_STRING", **scalar},
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


def _versions(request: Request, name: str) -> list[str]:
    service: Service = request.app.state.service
    return [str(v) for v in service.repository.versions[name]]
