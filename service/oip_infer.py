"""The Open Inference Protocol's ``infer`` (``POST /v2/models/{m}[/versions/{v}]/infer``): the
request read and checked against the model's metadata (``service.oip``), every image through
``service.pipeline`` on its own, so that it batches with other requests' images, and the wanted
outputs of each encoded on the worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import numpy as np
from fastapi import Request, Response

from service import masks, oip_wire, pipeline
from service.access import access_record
from service.core import ServedModel, Service
from service.errors import InvalidRequest, ModelNotFound, ServiceError
from service.oip_wire import InputTensor, OutputTensor
from service.oip_wire import Request as InferenceRequest
from service.pipeline import OutputFormat
from service.protocol import disconnected, read_body

IMAGE, INPUT = "image", "input"
OUTPUTS = ("labels", "png", "rle")  # the order outputs are returned in by default
T = TypeVar("T")


def model_version(version: str | None) -> int | None:
    """The version a path names (None: the latest); ModelNotFound for a non-integer."""
    if version is None:
        return None
    if not version.isdigit() or int(version) < 1:
        raise ModelNotFound(f"no model version '{version}': versions are integers >= 1")
    return int(version)


def served_model(service: Service, name: str, version: str | None) -> ServedModel:
    return service.model(name, model_version(version))


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """One ``$inference_request`` in, its ``$inference_response`` out (JSON, or JSON followed by
    binary data with ``Inference-Header-Content-Length``)."""
    service: Service = request.app.state.service
    record = access_record(request)
    try:
        served = served_model(service, name, version)
        # Labelled only once resolved: a client's made-up names never become metric labels.
        record.model, record.version = served.ref.name, str(served.ref.version)
        served.batcher.check_capacity()  # a full queue refuses before the upload is read
        body = await read_body(request, service.settings.max_body_bytes)
        parsed = oip_wire.read_request(body, request.headers.get("inference-header-content-length"))
        wanted = _requested_outputs(parsed)
        record.format = "+".join(n for n in OUTPUTS if n in wanted)
        deadline = record.arrived + _timeout_s(parsed, service.settings.request_timeout_s)
        outputs = await _run(service, served, request, _the_input(parsed, served), wanted, deadline)
    except ServiceError as exc:
        record.error_code = exc.code
        raise
    head: dict[str, Any] = {"model_name": served.ref.name, "model_version": str(served.ref.version)}
    if parsed.id is not None:
        head["id"] = parsed.id
    content, header_length = oip_wire.write_response(head, outputs)
    headers = {"X-Model": served.ref.name, "X-Model-Version": str(served.ref.version)}
    if header_length is None:
        return Response(content, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(header_length)
    return Response(content, media_type="application/octet-stream", headers=headers)


def _requested_outputs(parsed: InferenceRequest) -> dict[str, bool]:
    """Output name -> whether it goes as binary data. No ``outputs``: all of them (``png``
    only when binary: a PNG is not text, so a JSON answer cannot carry it)."""
    default_binary = parsed.parameters.get("binary_data_output") is True
    if parsed.outputs is None:
        return {n: default_binary for n in OUTPUTS if default_binary or n != "png"}
    wanted: dict[str, bool] = {}
    for out in parsed.outputs:
        if out.name not in OUTPUTS:
            raise InvalidRequest(f"unknown output '{out.name}' (outputs: {', '.join(OUTPUTS)})")
        if out.name in wanted:
            raise InvalidRequest(f"output '{out.name}' is requested twice")
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


def _timeout_s(parsed: InferenceRequest, limit_s: float) -> float:
    """The server's request timeout, shortened by the request's ``timeout`` parameter
    (microseconds, as tritonclient sends it)."""
    timeout_us = parsed.parameters.get("timeout")
    if timeout_us is None:
        return limit_s
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float) or timeout_us <= 0:
        raise InvalidRequest("the parameter 'timeout' must be a positive number of microseconds")
    return min(limit_s, timeout_us / 1e6)


def _the_input(parsed: InferenceRequest, served: ServedModel) -> InputTensor:
    """The request's one input, checked against the model's metadata."""
    if len(parsed.inputs) != 1:
        raise InvalidRequest(f"send exactly one input, '{IMAGE}' or '{INPUT}'")
    (tensor,) = parsed.inputs
    spec = served.card.input
    if tensor.name == IMAGE:
        if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise InvalidRequest(
                f"input '{IMAGE}' is BYTES [N], one encoded image per element; got "
                f"{tensor.datatype} {list(tensor.shape)}"
            )
    elif tensor.name == INPUT:
        if tensor.datatype not in ("FP32", "FP16") or tensor.shape[1:] != (
            3,
            spec.height,
            spec.width,
        ):
            raise InvalidRequest(
                f"input '{INPUT}' is FP32 or FP16 [N,3,{spec.height},{spec.width}] (the model's "
                f"input size); got {tensor.datatype} {list(tensor.shape)}"
            )
    else:
        raise InvalidRequest(f"unknown input '{tensor.name}' (inputs: '{IMAGE}', '{INPUT}')")
    images, limit = tensor.shape[0] if tensor.shape else 0, served.batcher.max_queue
    if not 1 <= images <= limit:
        raise InvalidRequest(
            f"a request holds 1 to {limit} images (SEGSERVE_MAX_QUEUE); got {images}"
        )
    return tensor


async def _run(
    service: Service,
    served: ServedModel,
    request: Request,
    tensor: InputTensor,
    wanted: dict[str, bool],
    deadline: float,
) -> list[OutputTensor]:
    """Every image through the pipeline, each on its own so it batches with other requests';
    then the wanted outputs of each, encoded on the worker threads."""
    gone = asyncio.ensure_future(disconnected(request))  # one watcher for all the images

    def client_gone() -> Awaitable[None]:
        return asyncio.shield(gone)

    try:
        if tensor.name == IMAGE:
            labelled = await _all(
                pipeline.label_image(
                    service,
                    served,
                    data,
                    OutputFormat.png,
                    deadline=deadline,
                    client_gone=client_gone,
                )
                for data in oip_wire.byte_elements(tensor)
            )
            found = [(item.labels, item.decoded.size) for item in labelled]
        else:
            spec = served.card.input
            labels = await _all(
                pipeline.label_input(service, served, x, deadline=deadline, client_gone=client_gone)
                for x in oip_wire.numeric_array(tensor)
            )
            found = [(item, (spec.width, spec.height)) for item in labels]
    finally:
        gone.cancel()
    sizes = {size for _, size in found}
    if "labels" in wanted and len(sizes) > 1:
        raise InvalidRequest(
            f"the images have different sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}) "
            "and 'labels' is one [N,H,W] tensor: send them in separate requests, or ask for "
            "'png' or 'rle' only"
        )
    encoded = await _all(
        service.run_cpu(_encode, labels, size, served, tuple(wanted)) for labels, size in found
    )
    return [_output(name, binary, encoded) for name, binary in wanted.items()]


async def _all(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Await every one concurrently; when one fails, cancel the others (their images leave the
    batcher's queue) and raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _encode(
    labels: np.ndarray, size: tuple[int, int], served: ServedModel, names: tuple[str, ...]
) -> dict[str, Any]:
    """One image's wanted outputs: labels at its size, and the png and rle of /segment."""
    out: dict[str, Any] = {}
    for name in names:
        if name == "labels":
            out[name] = masks.resize_labels(labels, size)
        else:
            out[name] = pipeline.encode_mask(labels, size, served, OutputFormat(name))
    return out


def _output(name: str, binary: bool, encoded: list[dict[str, Any]]) -> OutputTensor:
    """Output ``name`` of every image, as one tensor."""
    if name == "labels":
        stacked = np.stack([e[name] for e in encoded])
        data = [] if binary else stacked.ravel().tolist()
        return OutputTensor(name, "UINT8", stacked.shape, binary, stacked.tobytes(), data)
    elements: list[bytes] = [e[name] for e in encoded]
    raw = oip_wire.bytes_tensor(elements) if binary else b""
    data = [] if binary else [e.decode() for e in elements]
    return OutputTensor(name, "BYTES", (len(elements),), binary, raw, data)
