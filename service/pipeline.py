"""The one request pipeline: image bytes + a served model + options in, the model-sized labels
and the encoded mask out, with the time each stage took. Every front door and ``bench.offline``
call ``segment``; nothing here knows HTTP.

    result = await segment(service, served, data, SegmentOptions(OutputFormat.rle), deadline=t)
    result.content, result.media_type, result.labels, result.times.queue_s

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
    t0 = time.perf_counter()
    with served.batcher.announce():  # the batcher may wait for this image, not for nothing
        prepared = await service.run_cpu(
            prepare_input, data, served.card, options.fmt, service.settings.max_pixels
        )
        t1 = time.perf_counter()
        queued = served.batcher.enqueue(prepared.x, deadline=deadline)
    done = await _unless_gone(queued, client_gone)
    served.queue_wait.observe(done.queued_s)
    t2 = time.perf_counter()
    content = await service.run_cpu(encode_output, done.value, prepared.decoded, served, options)
    times = StageTimes(t1 - t0, done.queued_s, done.run_s, time.perf_counter() - t2)
    return Segmented(done.value, content, MEDIA_TYPES[options.fmt], times)


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
    card, size = served.card, decoded.size
    # png and rle scale the model-sized labels to the image's size as they encode.
    if options.fmt is OutputFormat.png:
        return masks.encode_png(labels, card.palette(), size=size)
    if options.fmt is OutputFormat.rle:
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
    image = decoded.image
    if image.size != size:  # decoders may hand back a reduced scale; blend at full size
        image = image.resize(size)
    return masks.encode_overlay(
        image, masks.resize_labels(labels, size), card.palette(), options.alpha
    )


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
