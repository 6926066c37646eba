"""The Open Inference Protocol's tensors, whichever door they came through: an input's elements
read from its raw bytes or its listed values, and an output in the raw form both doors send.

Raw data is what REST's binary tensor data extension and gRPC's ``raw_input_contents`` /
``raw_output_contents`` share: little endian, row major, and a BYTES element is a 4-byte
unsigned length followed by its bytes.

    images = byte_elements(tensor)  # list[bytes] of a BYTES InputTensor
    x = numeric_array(tensor)  # np.ndarray of an FP32/FP16 InputTensor, its shape
    out = OutputTensor.of_labels(stacked)  # or OutputTensor.of_bytes("png", [...])
    out.raw, out.json_data()
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidRequest

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "UINT8": np.dtype("u1"),
}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # the listed values (JSON "data", gRPC "contents"), when not raw
    raw: bytes | None  # its raw data (REST binary_data_size, gRPC raw_input_contents)

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One output of every image of a request: ``labels`` as one UINT8 array, ``scores`` as one
    FP32 array, or a BYTES tensor of one encoded element per image."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]

    @classmethod
    def of_labels(cls, stacked: np.ndarray) -> OutputTensor:
        return cls("labels", "UINT8", stacked.shape, stacked)

    @classmethod
    def of_scores(cls, stacked: np.ndarray) -> OutputTensor:
        return cls("scores", "FP32", stacked.shape, stacked)

    @classmethod
    def of_bytes(cls, name: str, elements: list[bytes]) -> OutputTensor:
        return cls(name, "BYTES", (len(elements),), elements)

    @property
    def raw(self) -> bytes:
        if isinstance(self.values, np.ndarray):
            return self.values.tobytes()
        return bytes_tensor(self.values)

    def json_data(self) -> list[Any]:
        """The values as JSON can carry them: numbers, or each element as UTF-8 text."""
        if isinstance(self.values, np.ndarray):
            data: list[Any] = self.values.ravel().tolist()
            return data
        return [e.decode() for e in self.values]


def byte_elements(tensor: InputTensor) -> list[bytes]:
    """The elements of a BYTES tensor: from raw data (length-prefixed) or listed values (bytes,
    or text as its UTF-8 bytes). Raises InvalidRequest unless there are exactly ``shape``'s
    count."""
    if tensor.raw is not None:
        elements = _split_bytes(tensor.name, tensor.raw)
    else:
        flat = flatten(tensor.data)
        if not all(isinstance(e, str | bytes) for e in flat):
            raise InvalidRequest(f"input '{tensor.name}': BYTES data in JSON must be strings")
        elements = [e.encode() if isinstance(e, str) else e for e in flat]
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


def flatten(data: Any) -> list[Any]:
    """Nested lists as one flat list, in row-major order."""
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
    """An FP32/FP16/UINT8 tensor as an array of its shape, from raw data or listed numbers.
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
    flat = flatten(tensor.data)
    if len(flat) != tensor.count:
        raise InvalidRequest(
            f"input '{tensor.name}' has {len(flat)} elements; its shape "
            f"{list(tensor.shape)} says {tensor.count}"
        )
    if not all(isinstance(e, int | float) and not isinstance(e, bool) for e in flat):
        raise InvalidRequest(f"input '{tensor.name}': {tensor.datatype} data must be numbers")
    if tensor.datatype == "UINT8" and not all(isinstance(e, int) and 0 <= e <= 255 for e in flat):
        raise InvalidRequest(f"input '{tensor.name}': UINT8 data must be integers 0..255")
    return np.asarray(flat, dtype).reshape(tensor.shape)


def bytes_tensor(elements: list[bytes]) -> bytes:
    """BYTES elements in the raw form: each a 4-byte little-endian length, then the bytes."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)
