"""The Open Inference Protocol's REST wire format: an inference request body read into tensors,
and a response body written from them.

The contract is KServe's ``inference_rest.md`` (github.com/kserve/open-inference-protocol) with
Triton's binary tensor data extension (``docs/protocol/extension_binary_data.md``): the JSON
inference header first, then, when ``Inference-Header-Content-Length`` gives the header's length,
the binary data of every input that has ``parameters.binary_data_size``, in input order; little
endian, row major; a BYTES element is a 4-byte unsigned length followed by its bytes.

    request = read_request(body, header_length)  # raises InvalidRequest for any breach
    body, header_length = write_response(head, outputs, binary={"png": True, "rle": False})

The tensors themselves (``InputTensor``, ``OutputTensor``, raw BYTES) are ``service.oip_tensors``,
which the gRPC door shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from service.errors import InvalidRequest
from service.oip_tensors import InputTensor, OutputTensor

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """``$inference_request``; unknown fields (``model_name``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    id: str | None
    parameters: dict[str, Parameter]
    inputs: list[InputTensor]
    outputs: list[RequestOutput] | None


def read_request(body: bytes, header_length: str | None) -> Request:
    """The request in ``body``; ``header_length`` is the ``Inference-Header-Content-Length``
    header (None: the whole body is JSON). Raises InvalidRequest, saying what is wrong."""
    length = len(body) if header_length is None else _header_length(header_length, len(body))
    try:
        head = InferenceRequest.model_validate_json(body[:length])
    except ValidationError as exc:
        raise InvalidRequest(f"the inference request is not valid: {_summary(exc)}") from None
    binary = memoryview(body)[length:]
    inputs, offset = [], 0
    for given in head.inputs:
        if any(d < 0 for d in given.shape):
            raise InvalidRequest(f"input '{given.name}': shape {given.shape} has a negative size")
        raw = None
        if "binary_data_size" in given.parameters:
            size = _binary_size(given, len(binary) - offset)
            raw = bytes(binary[offset : offset + size])
            offset += size
        elif given.data is None:
            raise InvalidRequest(f"input '{given.name}' has neither data nor binary_data_size")
        inputs.append(InputTensor(given.name, given.datatype, tuple(given.shape), given.data, raw))
    if offset != len(binary):
        raise InvalidRequest(
            f"the body has {len(binary) - offset} bytes after the inputs' binary data "
            f"(the inputs' binary_data_size add up to {offset})"
        )
    return Request(head.id, head.parameters, inputs, head.outputs)


def _header_length(value: str, body_bytes: int) -> int:
    if not value.isdigit():
        raise InvalidRequest(f"Inference-Header-Content-Length '{value}' is not a byte count")
    length = int(value)
    if length == 0:
        raise InvalidRequest(
            "requests without an inference header (Inference-Header-Content-Length: 0) are not "
            "supported: send the JSON header, then the binary data"
        )
    if length > body_bytes:
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {length} but the body has {body_bytes} bytes"
        )
    return length


def _binary_size(given: RequestInput, available: int) -> int:
    size = given.parameters["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"input '{given.name}': binary_data_size must be a byte count")
    if size > available:
        raise InvalidRequest(
            f"input '{given.name}': binary_data_size is {size} but only {available} bytes of "
            "binary data are left in the body"
        )
    return size


def _summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]
    )
    return shown + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


def write_response(
    head: dict[str, Any], outputs: list[OutputTensor], binary: dict[str, bool]
) -> tuple[bytes, int | None]:
    """``$inference_response``: ``head`` (model_name, model_version, id) with ``outputs``, those
    that ``binary`` names true as binary data after the JSON. Returns the body and the JSON's
    length, None when all JSON."""
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary[out.name]:
            raw = out.raw
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = out.json_data()
        entries.append(entry)
    header = orjson.dumps({**head, "outputs": entries})
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
