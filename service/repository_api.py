"""The Open Inference Protocol's model repository extension (Triton's shapes): the index of
versions and their states, and, with ``SEGSERVE_MODEL_CONTROL=explicit``, load and unload.

    POST /v2/repository/index                -> [{"name", "version", "state", "reason"}]
                                                (body {"ready": true}: the READY ones only)
    POST /v2/repository/models/{name}/load   -> 200 {} once served (or 400 {"error": ...});
                                                no configuration or file overrides
    POST /v2/repository/models/{name}/unload -> 200 {} once no longer routed to

Refusals are raised as ``InvalidRequest`` (400), which ``service.problems`` answers with the
protocol's ``{"error": "..."}``. These routes are behind the API key when keys are set.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request

from service.control import ModelControl
from service.errors import InvalidRequest, ModelLoadError
from service.protocol import read_body

router = APIRouter(prefix="/v2/repository", include_in_schema=False)  # OIP: its own spec


def _control(request: Request) -> ModelControl:
    control: ModelControl = request.app.state.control
    return control


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (Triton's clients send one, often empty); {} without one."""
    raw = await read_body(request, request.app.state.service.settings.max_body_bytes)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


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
    ready_only = (await _body(request)).get("ready") is True
    states = await _control(request).index()
    return [
        {"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason}
        for s in states
        if s.state == "READY" or not ready_only
    ]


@router.post("/models/{name}/load", summary="Load (or reload) every version of a model")
async def load(request: Request, name: Annotated[str, Path()]) -> dict[str, Any]:
    control = _explicit_control(request)
    if overrides := sorted((await _body(request)).get("parameters") or {}):
        raise InvalidRequest(
            f"load takes no overrides ({', '.join(overrides)}): a model is what its folder "
            "holds, its card included (python -m model_export annotate changes a card)"
        )
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
