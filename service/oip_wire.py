"""The Open Inference Protocol's REST wire format: an inference request body read into tensors,
and a response body written from them.

The contract is KServe's ``inference_rest.md`` (github.com/kserve/open-inference-protocol) with
Triton's binary tensor data extension (``docs/protocol/extension_binary_data.md``): the JSON
inference header first, then, when ``Inference-Header-Content-Length`` gives the header's length,
the binary data of every input that has ``parameters.binary_data_size``, in input order; little
endian, row major; a BYTES element is a 4-byte unsigned length followed by its bytes.

    request = read_request(body, header_length)  # raises InvalidRequest for any breach
    images = byte_elements(request.inputs[0])  # list[bytes] of a BYTES tensor
    x = numeric_array(request.inputs[0])  # np.ndarray of an FP32/FP16 tensor, its shape
    body, header_length = write_response(head, [OutputTensor("labels", "UINT8", ...)])
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
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

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "UINT8": np.dtype("u1"),
}
_LENGTH = struct.Struct("<I")


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
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # the JSON "data", when the tensor came as JSON
    raw: bytes | None  # its binary data, when it came with binary_data_size

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class Request:
    id: str | None
    parameters: dict[str, Parameter]
    inputs: list[InputTensor]
    outputs: list[RequestOutput] | None


@dataclass(frozen=True, slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    binary: bool
    raw: bytes  # the binary form (BYTES: length-prefixed elements)
    data: list[Any]  # the JSON form, used when not ``binary``


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


def byte_elements(tensor: InputTensor) -> list[bytes]:
    """The elements of a BYTES tensor: from binary data (length-prefixed) or JSON strings
    (their UTF-8 bytes). Raises InvalidRequest unless there are exactly ``shape``'s count."""
    if tensor.raw is not None:
        elements = _split_bytes(tensor.name, tensor.raw)
    else:
        flat = _flatten(tensor.data)
        if not all(isinstance(e, str) for e in flat):
            raise InvalidRequest(f"input '{tensor.name}': BYTES data in JSON must be strings")
        elements = [e.encode() for e in flat]
    if len(elements) != tensor.count:
        raise InvalidRequest(
            f"input '{tensor.name}' has {len(elements)} elements; its shape "
            f"{list(tensor.shape)} says {tensor.count}"
        )
    return elements


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise InvalidRequest(f"input '{name}': BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise InvalidRequest(
                f"input '{name}': a BYTES element claims {size} bytes; {len(raw) - offset} left"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: nesting depth is the client's to choose
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def numeric_array(tensor: InputTensor) -> np.ndarray:
    """An FP32/FP16/UINT8 tensor as an array of its shape, from binary data or JSON numbers.
    Raises InvalidRequest when the data does not fill the shape exactly."""
    dtype = NUMERIC_DTYPES[tensor.datatype]
    if tensor.raw is not None:
        expected = tensor.count * dtype.itemsize
        if len(tensor.raw) != expected:
            raise InvalidRequest(
                f"input '{tensor.name}': {len(tensor.raw)} bytes of binary data; shape "
                f"{list(tensor.shape)} of {tensor.datatype} needs {expected}"
            )
        return np.frombuffer(tensor.raw, dtype).reshape(tensor.shape)
    flat = _flatten(tensor.data)
    if len(flat) != tensor.count:
        raise InvalidRequest(
            f"input '{tensor.name}' has {len(flat)} elements; its shape "
            f"{list(tensor.shape)} says {tensor.count}"
        )
    if not all(isinstance(e, int | float) and not isinstance(e, bool) for e in flat):
        raise InvalidRequest(f"input '{tensor.name}': {tensor.datatype} data must be numbers")
    return np.asarray(flat, dtype).reshape(tensor.shape)


def bytes_tensor(elements: list[bytes]) -> bytes:
    """BYTES elements in the binary form: each a 4-byte little-endian length, then the bytes."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def write_response(head: dict[str, Any], outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """``$inference_response``: ``head`` (model_name, model_version, id) with ``outputs``; the
    binary ones after the JSON. Returns the body and the JSON's length, None when all JSON."""
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            entry["parameters"] = {"binary_data_size": len(out.raw)}
            chunks.append(out.raw)
        else:
            entry["data"] = out.data
        entries.append(entry)
    header = orjson.dumps({**head, "outputs": entries})
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
