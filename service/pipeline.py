"""The one request pipeline: image bytes + a served model + options in, the model-sized labels
and the encoded mask out, with the time each stage took. Every front door and ``bench.offline``
call ``segment``, or its stages; nothing here knows HTTP.

    result = await segment(service, served, data, SegmentOptions(OutputFormat.rle), deadline=t)
    result.content, result.media_type, result.labels, result.times.queue_s

    # The stages on their own, for doors that return several encodings of one image (OIP):
    labelled = await label_image(service, served, data, OutputFormat.png, deadline=t)
    labels = await label_input(service, served, x, deadline=t)  # x: a prepared (3, H, W) input
    encode_mask(labels, (width, height), served, OutputFormat.rle)  # png or rle bytes

Stages: ``prepare_input`` (decode + EXIF orientation + resize/normalise, on a worker thread) ->
the model's batcher (queue, then inference with other requests' images) -> ``encode_output``
(labels scaled to the image's size as they are encoded, on a worker thread).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import orjson

from service import imaging, masks
from service.batching import Completed
from service.core import ServedModel, Service
from service.errors import ClientClosed
from service.model_card import ModelCard


class OutputFormat(StrEnum):
    png = "png"
    rle = "rle"
    overlay = "overlay"


MEDIA_TYPES = {
    OutputFormat.png: "image/png",
    OutputFormat.rle: "application/json",
    OutputFormat.overlay: "image/png",
}


@dataclass(frozen=True, slots=True)
class SegmentOptions:
    fmt: OutputFormat = OutputFormat.png
    alpha: float = 0.5  # overlay opacity


@dataclass(frozen=True, slots=True)
class Prepared:
    decoded: imaging.DecodedImage
    x: np.ndarray  # the model input (3, H, W)


@dataclass(frozen=True, slots=True)
class StageTimes:
    decode_s: float  # decode + prepare
    queue_s: float
    infer_s: float  # the whole batch's run
    encode_s: float


@dataclass(frozen=True, slots=True)
class Labelled:
    labels: np.ndarray  # uint8 (h, w) at the model's output size
    decoded: imaging.DecodedImage
    decode_s: float  # decode + prepare
    queue_s: float
    infer_s: float  # the whole batch's run


@dataclass(frozen=True, slots=True)
class Segmented:
    labels: np.ndarray  # uint8 (h, w) at the model's output size
    content: bytes
    media_type: str
    times: StageTimes


async def segment(
    service: Service,
    served: ServedModel,
    data: bytes,
    options: SegmentOptions,
    *,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> Segmented:
    """Run one image through ``served``. ``deadline`` (``time.monotonic()``) bounds the wait for
    a batch; ``client_gone`` completes when the caller no longer wants the answer, which then
    withdraws the image from the queue and raises ClientClosed. Raises the ``ServiceError`` of
    the failing stage (InvalidImage, PayloadTooLarge, Overloaded, DeadlineExceeded, ...)."""
    labelled = await label_image(
        service, served, data, options.fmt, deadline=deadline, client_gone=client_gone
    )
    t0 = time.perf_counter()
    content = await service.run_cpu(
        encode_output, labelled.labels, labelled.decoded, served, options
    )
    times = StageTimes(
        labelled.decode_s, labelled.queue_s, labelled.infer_s, time.perf_counter() - t0
    )
    return Segmented(labelled.labels, content, MEDIA_TYPES[options.fmt], times)


async def label_image(
    service: Service,
    served: ServedModel,
    data: bytes,
    fmt: OutputFormat,
    *,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> Labelled:
    """``segment`` without the encoding: the model-sized labels of ``data`` decoded for ``fmt``,
    and the decoded image. Raises as ``segment`` does."""
    t0 = time.perf_counter()
    with served.batcher.announce():  # the batcher may wait for this image, not for nothing
        prepared = await service.run_cpu(
            prepare_input, data, served.card, fmt, service.settings.max_pixels
        )
        t1 = time.perf_counter()
        queued = served.batcher.enqueue(prepared.x, deadline=deadline)
    done = await _unless_gone(queued, client_gone)
    served.queue_wait.observe(done.queued_s)
    return Labelled(done.value, prepared.decoded, t1 - t0, done.queued_s, done.run_s)


async def label_input(
    service: Service,
    served: ServedModel,
    x: np.ndarray,
    *,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> np.ndarray:
    """The model-sized uint8 labels of ``x``, an input the client prepared itself: (3, H, W) at
    the model's input size, in any float dtype (cast to the model's). The batcher runs it with
    other requests' images. Raises ValueError for another shape; else as ``segment`` does."""
    spec = served.card.input
    if x.shape != (3, spec.height, spec.width):
        raise ValueError(f"expected (3, {spec.height}, {spec.width}), got {x.shape}")
    queued = served.batcher.enqueue(np.ascontiguousarray(x, spec.dtype), deadline=deadline)
    done = await _unless_gone(queued, client_gone)
    served.queue_wait.observe(done.queued_s)
    labels: np.ndarray = done.value
    return labels


def prepare_input(data: bytes, card: ModelCard, fmt: OutputFormat, max_pixels: int) -> Prepared:
    """``data`` decoded for ``fmt`` and prepared for ``card``'s model."""
    decoded = decode_input(data, card, fmt, max_pixels)
    return Prepared(decoded, imaging.prepare(decoded.image, card.input))


def decode_input(
    data: bytes, card: ModelCard, fmt: OutputFormat, max_pixels: int
) -> imaging.DecodedImage:
    """``data`` decoded upright. png and rle only need the model's input size, so a big JPEG is
    decoded at a reduced scale; overlay blends at full size."""
    min_size = None if fmt is OutputFormat.overlay else (card.input.width, card.input.height)
    return imaging.decode(data, max_pixels=max_pixels, min_size=min_size)


def encode_output(
    labels: np.ndarray,
    decoded: imaging.DecodedImage,
    served: ServedModel,
    options: SegmentOptions,
) -> bytes:
    """``labels`` encoded as ``options.fmt`` at the image's size."""
    size = decoded.size
    if options.fmt is not OutputFormat.overlay:
        return encode_mask(labels, size, served, options.fmt)
    image = decoded.image
    if image.size != size:  # decoders may hand back a reduced scale; blend at full size
        image = image.resize(size)
    return masks.encode_overlay(
        image, masks.resize_labels(labels, size), served.card.palette(), options.alpha
    )


def encode_mask(
    labels: np.ndarray, size: tuple[int, int], served: ServedModel, fmt: OutputFormat
) -> bytes:
    """The model-sized ``labels`` as a png or rle answer of ``size`` (width, height): scaled to
    it as they are encoded. Raises ValueError for overlay, which needs the image."""
    card = served.card
    if fmt is OutputFormat.png:
        return masks.encode_png(labels, card.palette(), size=size)
    if fmt is OutputFormat.rle:
        width, height = size
        return orjson.dumps(
            {
                "model": served.ref.name,
                "version": served.ref.version,
                "width": width,
                "height": height,
                "masks": masks.encode_rle(labels, card.classes, size=size),
            }
        )
    raise ValueError(f"{fmt} is not a mask encoding")


async def _unless_gone(
    queued: asyncio.Future[Completed], client_gone: Callable[[], Awaitable[None]] | None
) -> Completed:
    if client_gone is None:
        return await queued
    watcher: asyncio.Future[object] = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait((queued, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not queued.done():  # gone, or this request cancelled: free its place in the queue
            queued.cancel()
    if queued.cancelled():
        raise ClientClosed("the client closed the connection before its answer was ready")
    return queued.result()
