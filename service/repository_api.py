"""The Open Inference Protocol's model repository extension (Triton's shapes): the index of
versions and their states, and, with ``SEGSERVE_MODEL_CONTROL=explicit``, load and unload.

    POST /v2/repository/index                -> [{"name", "version", "state", "reason"}]
    POST /v2/repository/models/{name}/load   -> 200 {} once served (or 400 {"error": ...})
    POST /v2/repository/models/{name}/unload -> 200 {} once no longer routed to

Refusals are raised as ``InvalidRequest`` (400), which ``service.problems`` answers with the
protocol's ``{"error": "..."}``. These routes are behind the API key when keys are set.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from service.control import ModelControl
from service.errors import InvalidRequest, ModelLoadError

router = APIRouter(prefix="/v2/repository", include_in_schema=False)  # OIP: its own spec


def _control(request: Request) -> ModelControl:
    control: ModelControl = request.app.state.control
    return control


def _explicit_control(request: Request) -> ModelControl:
    control = _control(request)
    mode = control.service.settings.model_control
    if mode != "explicit":
        raise InvalidRequest(
            f"load and unload need SEGSERVE_MODEL_CONTROL=explicit (this server: {mode})"
        )
    return control


@router.post("/index", summary="Every model version on disk or served, with its state")
async def index(request: Request) -> list[dict[str, Any]]:
    states = await _control(request).index()
    return [
        {"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason}
        for s in states
    ]


@router.post("/models/{name}/load", summary="Load (or reload) every version of a model")
async def load(request: Request, name: Annotated[str, Path()]) -> dict[str, Any]:
    control = _explicit_control(request)
    try:
        await control.sync(name)
    except ModelLoadError as exc:
        raise InvalidRequest(control.public(str(exc))) from exc
    if failures := control.failures(name):
        raise InvalidRequest(f"failed to load '{name}': {'; '.join(failures)}")
    if name not in control.service.repository.versions:
        raise InvalidRequest(f"failed to load '{name}': no model of that name in the repository")
    return {}


@router.post("/models/{name}/unload", summary="Stop serving every version of a model")
async def unload(request: Request, name: Annotated[str, Path()]) -> dict[str, Any]:
    control = _explicit_control(request)
    if name not in control.service.repository.versions:
        raise InvalidRequest(f"failed to unload '{name}': it is not being served")
    await control.unload(name)
    return {}
