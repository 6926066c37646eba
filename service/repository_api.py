"""The Open Inference Protocol's model repository extension (Triton's shapes): the index of
versions and their states, and, with ``SEGSERVE_MODEL_CONTROL=explicit``, load and unload.

    POST /v2/repository/index                -> [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{name}/load   -> 200 {} once served (or 400 {"error": ...})
    POST /v2/repository/models/{name}/unload -> 200 {} once no longer routed to

Errors answer ``{"error": "..."}`` as the protocol does. These routes are behind the API key
when keys are set (they are not public paths).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from service.control import ModelControl
from service.errors import ModelLoadError

router = APIRouter(prefix="/v2/repository", tags=["model control"])


def _control(request: Request) -> ModelControl:
    control: ModelControl = request.app.state.control
    return control


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _explicit_only(request: Request) -> JSONResponse | None:
    mode = _control(request).service.settings.model_control
    if mode == "explicit":
        return None
    return _error(
        400, f"load and unload need SEGSERVE_MODEL_CONTROL=explicit (this server: {mode})"
    )


@router.post("/index", summary="Every model version on disk or served, with its state")
async def index(request: Request) -> list[dict[str, Any]]:
    states = await _control(request).index()
    return [
        {"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason}
        for s in states
    ]


@router.post("/models/{name}/load", summary="Load (or reload) every version of a model")
async def load(request: Request, name: Annotated[str, Path()]) -> JSONResponse:
    if (refused := _explicit_only(request)) is not None:
        return refused
    control = _control(request)
    try:
        await control.sync(name)
    except ModelLoadError as exc:
        return _error(400, str(exc))
    if failures := control.failures(name):
        return _error(400, f"failed to load '{name}': {'; '.join(failures)}")
    if name not in control.service.repository.versions:
        return _error(400, f"failed to load '{name}': no model of that name in the repository")
    return JSONResponse({})


@router.post("/models/{name}/unload", summary="Stop serving every version of a model")
async def unload(request: Request, name: Annotated[str, Path()]) -> JSONResponse:
    if (refused := _explicit_only(request)) is not None:
        return refused
    control = _control(request)
    if name not in control.service.repository.versions:
        return _error(400, f"failed to unload '{name}': it is not being served")
    await control.unload(name)
    return JSONResponse({})
