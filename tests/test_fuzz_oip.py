"""Fuzzing of the Open Inference Protocol's REST routes (``/v2``, service/oip.py): never a 5xx.

The routes are not in segserve's ``/openapi.json`` (the protocol's own document describes them),
so ``OIP_SCHEMA`` below describes them, after KServe's ``open_inference_rest.yaml``, with the
inference request body made small enough to generate quickly. schemathesis fuzzes every route
with valid and invalid data against the shared test server; a hypothesis test adds what JSON
cannot express: bodies with binary tensor data and ``Inference-Header-Content-Length``.
Bounded: a fixed number of derandomised examples per route and mode.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance

from tests.images import encode, quadrants
from tests.support import Server

EXAMPLES = 30  # per route and generation mode
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

_PARAMETER = {"oneOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "string"}]}
_PARAMETERS = {"type": "object", "additionalProperties": _PARAMETER, "maxProperties": 3}
_DATA_ELEMENT = {"oneOf": [{"type": "string", "maxLength": 8}, {"type": "number"}]}
_NESTED = {"type": "array", "items": _DATA_ELEMENT, "maxItems": 4}
_TENSOR_INPUT = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "enum": ["image", "input", "other"]},
        "shape": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
        "datatype": {"type": "string", "enum": ["BYTES", "FP32", "FP16", "INT32", "UINT8"]},
        "parameters": _PARAMETERS,
        "data": {
            "oneOf": [
                {"type": "array", "items": _DATA_ELEMENT, "maxItems": 16},
                {
                    "type": "array",
                    "items": {"type": "array", "items": _DATA_ELEMENT},
                    "maxItems": 4,
                },
            ]
        },
    },
}
_INFERENCE_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": _TENSOR_INPUT, "minItems": 1, "maxItems": 2},
        "outputs": {
            "type": "array",
            "maxItems": 4,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": ["labels", "png", "rle", "scores"]},
                    "parameters": _PARAMETERS,
                },
            },
        },
    },
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_ANSWERS = {str(s): {"description": "an answer"} for s in (200, 400, 404, 405, 413, 503, 504)}


def _get(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"parameters": list(parameters), "responses": _ANSWERS}}


def _infer(*parameters: dict[str, Any]) -> dict[str, Any]:
    body = {"required": True, "content": {"application/json": {"schema": _INFERENCE_REQUEST}}}
    return {"post": {"parameters": list(parameters), "requestBody": body, "responses": _ANSWERS}}


def oip_schema(base_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "segserve: the Open Inference Protocol over REST", "version": "2"},
        "servers": [{"url": base_url}],
        "paths": {
            "/v2": _get(),
            "/v2/health/live": _get(),
            "/v2/health/ready": _get(),
            "/v2/models/{name}": _get(_NAME),
            "/v2/models/{name}/versions/{version}": _get(_NAME, _VERSION),
            "/v2/models/{name}/ready": _get(_NAME),
            "/v2/models/{name}/config": _get(_NAME),
            "/v2/models/{name}/infer": _infer(_NAME),
            "/v2/models/{name}/versions/{version}/infer": _infer(_NAME, _VERSION),
        },
    }


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(oip_schema(server.base_url))
    schema.config.update(base_url=server.base_url)
    return schema


ROUTES = list(oip_schema("http://x")["paths"])
CASES = [(path, GenerationMode.POSITIVE) for path in ROUTES] + [
    (path, GenerationMode.NEGATIVE) for path in ROUTES if path.endswith("/infer")
]


@pytest.mark.parametrize(("path", "mode"), CASES)
def test_no_server_error_on_any_route(
    api_schema: schemathesis.BaseSchema, path: str, mode: GenerationMode
) -> None:
    (operation,) = (op.ok() for op in api_schema.get_all_operations() if op.ok().path == path)
    checks = [not_a_server_error] + [status_code_conformance] * (mode is GenerationMode.POSITIVE)

    @SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Case) -> None:
        if "name" in (case.path_parameters or {}) and case.path_parameters["name"] == "":
            case.path_parameters["name"] = "tiny"
        case.call_and_validate(checks=checks, timeout=30)

    fuzz()


_IMAGE = encode(quadrants(32, 24), "PNG")


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A JSON header with one input and its binary data: a real image, random bytes or
    BYTES elements whose lengths lie; a header length that may not fit the body."""
    elements = draw(st.lists(st.sampled_from([_IMAGE, b"", b"junk"]), min_size=0, max_size=3))
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    raw = draw(st.sampled_from([raw, raw[:-3], draw(st.binary(max_size=64))]))
    tensor = {
        "name": draw(st.sampled_from(["image", "input"])),
        "shape": draw(st.lists(st.integers(-2, 3), min_size=1, max_size=4)),
        "datatype": draw(st.sampled_from(["BYTES", "FP32", "FP16"])),
        "parameters": {"binary_data_size": draw(st.sampled_from([len(raw), len(raw) + 1, 0]))},
    }
    outputs = draw(st.sampled_from([[], [{"name": "png", "parameters": {"binary_data": True}}]]))
    header = json.dumps({"inputs": [tensor], **({"outputs": outputs} if outputs else {})})
    length = draw(st.sampled_from([len(header), len(header) - 1, len(header) + len(raw) + 1]))
    return header.encode() + raw, {"Inference-Header-Content-Length": str(length)}


@SETTINGS
@given(request=binary_requests())
def _binary_fuzz(client: httpx.Client, request: tuple[bytes, dict[str, str]]) -> None:
    body, headers = request
    response = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}


def test_no_server_error_on_binary_tensor_data(client: httpx.Client) -> None:
    _binary_fuzz(client)


def test_the_server_survived_the_fuzzing(server: Server) -> None:
    with server.client() as client:
        assert client.get("/v2/health/ready").status_code == 200
    assert server.process.poll() is None
    assert "Traceback" not in server.log()
