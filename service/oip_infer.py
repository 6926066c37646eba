"""The Open Inference Protocol's model side, whichever door a request came through (REST:
``service.oip``, gRPC: ``service.oip_grpc``): a model's metadata, the one input of an infer
request checked against it, every image through ``service.pipeline`` on its own (so that it
batches with other requests' images) and the wanted outputs of each encoded on the worker
threads. Nothing here knows HTTP or gRPC.

A served model has two optional inputs (a request sends exactly one) and three outputs:

    image   BYTES [N]            encoded images, decoded as /segment decodes them
    input   FP32|FP16 [N,3,H,W]  images the client prepared itself, at the model's input size
            (UINT8 pixels for a model whose graph takes uint8 and normalises them itself)
    labels  UINT8 [N,H,W]        class ids at each image's size (one size per request)
    png     BYTES [N]            the palette PNG of /segment?format=png
    rle     BYTES [N]            the JSON text of /segment?format=rle

    served = served_model(service, name, version)  # ModelNotFound, NotReady
    names = check_outputs(["png"])  # None: every output
    tensor = the_input(inputs, served)  # InvalidRequest unless one input fits the model
    outputs = await run(service, served, tensor, names, deadline=t)  # list[OutputTensor]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service import masks, pipeline
from service.core import ServedModel, Service
from service.errors import InvalidRequest, ModelNotFound
from service.oip_tensors import InputTensor, OutputTensor, byte_elements, numeric_array
from service.pipeline import OutputFormat
from service.repository import ModelVersion
from service.resampling import class_argmax

IMAGE, INPUT = "image", "input"
OUTPUTS = ("labels", "png", "rle")  # the order outputs are returned in by default
SCORES = "scores"  # only when asked for: float scores are 4 x classes the bytes of labels
KNOWN_OUTPUTS = (*OUTPUTS, SCORES)
PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX Runtime model
DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}  # the card's input dtype
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]  # -1: any size


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def model_version(version: str | None) -> int | None:
    """The version a request names (None or "": the latest); ModelNotFound for a non-integer."""
    if not version:
        return None
    if not version.isdigit() or int(version) < 1:
        raise ModelNotFound(f"no model version '{version}': versions are integers >= 1")
    return int(version)


def served_model(service: Service, name: str, version: str | None) -> ServedModel:
    return service.model(name, model_version(version))


def leased_model(
    service: Service, name: str, version: str | None, resolved: Callable[[ModelVersion], None]
) -> contextlib.AbstractContextManager[ServedModel]:
    """``served_model`` held for an inference: a version swapped out meanwhile (model control)
    still answers it; ``resolved`` as ``Service.lease``'s."""
    return service.lease(name, model_version(version), resolved=resolved)


def model_metadata(service: Service, name: str, version: str | None) -> ModelMetadata:
    """What the protocol's model metadata says of ``name``; raises as ``served_model``."""
    card = served_model(service, name, version).card
    spec = card.input
    return ModelMetadata(
        name=name,
        versions=[str(v) for v in service.repository.versions[name]],
        platform=PLATFORM,
        inputs=[
            TensorMetadata(IMAGE, "BYTES", [-1]),
            TensorMetadata(INPUT, DTYPES[spec.dtype], [-1, 3, spec.height, spec.width]),
        ],
        outputs=[
            TensorMetadata("labels", "UINT8", [-1, -1, -1]),
            TensorMetadata("png", "BYTES", [-1]),
            TensorMetadata("rle", "BYTES", [-1]),
            TensorMetadata(SCORES, "FP32", [-1, card.num_classes, spec.height, spec.width]),
        ],
    )


def check_outputs(names: list[str] | None) -> tuple[str, ...]:
    """The outputs a request asks for, in its order (None: every one). Raises InvalidRequest
    for an unknown or repeated name."""
    if names is None:
        return OUTPUTS
    for i, name in enumerate(names):
        if name not in KNOWN_OUTPUTS:
            raise InvalidRequest(f"unknown output '{name}' (outputs: {', '.join(KNOWN_OUTPUTS)})")
        if name in names[:i]:
            raise InvalidRequest(f"output '{name}' is requested twice")
    return tuple(names)


def format_label(names: Iterable[str]) -> str:
    """The metrics' ``format`` of a request for these outputs: "labels+png", ..."""
    return "+".join(n for n in KNOWN_OUTPUTS if n in names)


def timeout_s(parameters: Mapping[str, Any], limit_s: float) -> float:
    """The server's request timeout, shortened by the request's ``timeout`` parameter
    (microseconds, as tritonclient sends it)."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return limit_s
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float) or timeout_us <= 0:
        raise InvalidRequest("the parameter 'timeout' must be a positive number of microseconds")
    return min(limit_s, timeout_us / 1e6)


def the_input(inputs: list[InputTensor], served: ServedModel) -> InputTensor:
    """The request's one input, checked against the model's metadata."""
    if len(inputs) != 1:
        raise InvalidRequest(f"send exactly one input, '{IMAGE}' or '{INPUT}'")
    (tensor,) = inputs
    spec = served.card.input
    if tensor.name == IMAGE:
        if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise InvalidRequest(
                f"input '{IMAGE}' is BYTES [N], one encoded image per element; got "
                f"{tensor.datatype} {list(tensor.shape)}"
            )
    elif tensor.name == INPUT:
        # A float model takes either float type (cast to its own); a uint8 one, pixels.
        accepted = ("UINT8",) if spec.dtype == "uint8" else ("FP32", "FP16")
        if tensor.datatype not in accepted or tensor.shape[1:] != (3, spec.height, spec.width):
            raise InvalidRequest(
                f"input '{INPUT}' is {' or '.join(accepted)} [N,3,{spec.height},{spec.width}] "
                f"(the model's input size); got {tensor.datatype} {list(tensor.shape)}"
            )
    else:
        raise InvalidRequest(f"unknown input '{tensor.name}' (inputs: '{IMAGE}', '{INPUT}')")
    images, limit = tensor.shape[0] if tensor.shape else 0, served.batcher.max_queue
    if not 1 <= images <= limit:
        raise InvalidRequest(
            f"a request holds 1 to {limit} images (SEGSERVE_MAX_QUEUE); got {images}"
        )
    return tensor


async def run(
    service: Service,
    served: ServedModel,
    tensor: InputTensor,
    names: tuple[str, ...],
    *,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> list[OutputTensor]:
    """Every image through the pipeline, each on its own so it batches with other requests';
    then the outputs ``names`` of each, encoded on the worker threads. ``deadline`` and
    ``client_gone`` as ``pipeline.segment`` takes them; raises as it does, and InvalidRequest
    for images of different sizes when ``labels`` is wanted. With ``scores`` wanted, every
    output comes from the scores of the image stretched to the model's input size."""
    if SCORES in names:
        found = await _scored(service, served, tensor, deadline, client_gone)
    elif tensor.name == IMAGE:
        labelled = await _all(
            pipeline.label_image(
                service, served, data, OutputFormat.png, deadline=deadline, client_gone=client_gone
            )
            for data in byte_elements(tensor)
        )
        found = [(item.labels, item.decoded.size, None) for item in labelled]
    else:
        spec = served.card.input
        labels = await _all(
            pipeline.label_input(service, served, x, deadline=deadline, client_gone=client_gone)
            for x in numeric_array(tensor)
        )
        found = [(item, (spec.width, spec.height), None) for item in labels]
    sizes = {size for _, size, _ in found}
    if "labels" in names and len(sizes) > 1:
        raise InvalidRequest(
            f"the images have different sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}) "
            "and 'labels' is one [N,H,W] tensor: send them in separate requests, or ask for "
            "'png' or 'rle' only"
        )
    encoded = await _all(
        service.run_cpu(_encode, labels, size, scores, served, names)
        for labels, size, scores in found
    )
    return [_output(name, encoded) for name in names]


Found = tuple[np.ndarray, tuple[int, int], np.ndarray | None]  # labels, image size, scores


async def _scored(
    service: Service,
    served: ServedModel,
    tensor: InputTensor,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None,
) -> list[Found]:
    """Each image's scores through the model's scores lane, and the labels they give."""
    if tensor.name == IMAGE:
        scored = await _all(
            pipeline.score_image(service, served, data, deadline=deadline, client_gone=client_gone)
            for data in byte_elements(tensor)
        )
        pairs = [(scores, decoded.size) for scores, decoded in scored]
    else:
        spec = served.card.input
        scores = await _all(
            pipeline.label_input(
                service, served, x, scores=True, deadline=deadline, client_gone=client_gone
            )
            for x in numeric_array(tensor)
        )
        pairs = [(item, (spec.width, spec.height)) for item in scores]
    return [(class_argmax(item[None])[0], size, item) for item, size in pairs]


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
    labels: np.ndarray,
    size: tuple[int, int],
    scores: np.ndarray | None,
    served: ServedModel,
    names: tuple[str, ...],
) -> dict[str, Any]:
    """One image's wanted outputs: labels at its size, the png and rle of /segment, scores."""
    out: dict[str, Any] = {}
    for name in names:
        if name == SCORES:
            out[name] = scores
        elif name == "labels":
            out[name] = masks.resize_labels(labels, size)
        else:
            out[name] = pipeline.encode_mask(labels, size, served, OutputFormat(name))
    return out


def _output(name: str, encoded: list[dict[str, Any]]) -> OutputTensor:
    """Output ``name`` of every image, as one tensor."""
    if name == "labels":
        return OutputTensor.of_labels(np.stack([e[name] for e in encoded]))
    if name == SCORES:
        return OutputTensor.of_scores(np.stack([e[name] for e in encoded]).astype(np.float32))
    return OutputTensor.of_bytes(name, [e[name] for e in encoded])
