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
(labels scaled to the image's size as they are encoded, on a worker thread). The input policy
(``service.policies``: stretch, letterbox, native, tiles) decides how the image meets the model;
whatever it is, the labels handed to the encoders cover exactly the image. Tiles go through the
batcher one band (a row of windows) at a time, so a big image never holds the queue for long.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import orjson

from service import imaging, masks, policies
from service.core import ServedModel, Service
from service.errors import PayloadTooLarge
from service.model_card import ModelCard
from service.policies import PolicyRequest
from service.tiling import TileRun
from service.waiting import unless_gone

CARD_POLICY = PolicyRequest()  # no overrides: the card's input policy
STRETCH = PolicyRequest(resize="stretch")


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
    policy: PolicyRequest = CARD_POLICY


@dataclass(frozen=True, slots=True)
class Prepared:
    decoded: imaging.DecodedImage
    x: np.ndarray  # the model input (3, H, W)
    content: policies.Size  # (w, h): the top-left part of x that the image fills


@dataclass(frozen=True, slots=True)
class StageTimes:
    decode_s: float  # decode + prepare
    queue_s: float
    infer_s: float  # the whole batch's run
    encode_s: float


@dataclass(frozen=True, slots=True)
class Labelled:
    labels: np.ndarray  # uint8 (h, w) covering exactly the image (scaled to it when encoded)
    decoded: imaging.DecodedImage
    decode_s: float  # decode + prepare
    queue_s: float
    infer_s: float  # the whole batch's run


@dataclass(frozen=True, slots=True)
class Segmented:
    labels: np.ndarray  # uint8 (h, w) covering exactly the image
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
        service,
        served,
        data,
        options.fmt,
        policy=options.policy,
        deadline=deadline,
        client_gone=client_gone,
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
    policy: PolicyRequest = CARD_POLICY,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> Labelled:
    """``segment`` without the encoding: the labels of ``data`` decoded for ``fmt``, and the
    decoded image. Raises as ``segment`` does, and InvalidParameter for a policy the model
    cannot run."""
    resolved = policies.resolve(served.card.input, policy, any_size=served.pool.any_size)
    if resolved.resize == "tiles":
        return await _label_tiles(service, served, data, fmt, resolved, deadline, client_gone)
    t0 = time.perf_counter()
    args = (data, served.card, fmt, service.settings.max_pixels, resolved)
    if resolved.resize == "native":  # the lane is known once the image's size is
        prepared = await service.run_cpu(prepare_input, *args)
        lane = await served.lanes.get(prepared.x.shape[1:], scores=False)
        queued = lane.enqueue(prepared.x, deadline=deadline)
    else:
        with served.batcher.announce():  # the batcher may wait for this image, not for nothing
            prepared = await service.run_cpu(prepare_input, *args)
            queued = served.batcher.enqueue(prepared.x, deadline=deadline)
    t1 = time.perf_counter()
    done = await unless_gone(queued, client_gone)
    served.queue_wait.observe(done.queued_s)
    labels = _crop(done.value, prepared.content, prepared.x.shape[1:])
    return Labelled(labels, prepared.decoded, t1 - t0, done.queued_s, done.run_s)


async def _label_tiles(
    service: Service,
    served: ServedModel,
    data: bytes,
    fmt: OutputFormat,
    policy: policies.Policy,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None,
) -> Labelled:
    """The tiles policy: windows through the scores lane, blended band by band."""
    t0 = time.perf_counter()
    card, settings = served.card, service.settings
    # A tiled image is large: its calls always leave the event loop, even for a request alone.
    decoded = await service.workers.run(decode_input, data, card, fmt, settings.max_pixels, policy)
    content = policies.content_size(policy, card.input, decoded.size)
    tiles = policies.tile_count(policy, content)
    if tiles > settings.max_tiles:
        raise PayloadTooLarge(
            f"the image needs {tiles} tiles of {policy.tile} px at scale {policy.scale}; the "
            f"limit is {settings.max_tiles} (lower scale, or raise tile)"
        )
    image = await service.workers.run(imaging.resized, decoded.image, content)
    lane = await served.lanes.get((policy.tile, policy.tile), scores=True)
    run = TileRun(service, served, lane, image, policy, deadline, client_gone)
    decode_s = time.perf_counter() - t0
    labels = await run.labels()
    return Labelled(labels, decoded, decode_s, run.queue_s, run.infer_s)


def _crop(labels: np.ndarray, content: policies.Size, input_shape: tuple[int, ...]) -> np.ndarray:
    """The part of the model's ``labels`` that shows the image: its ``content`` (w, h) out of the
    input's (h, w), in the output's own resolution."""
    height, width = input_shape
    if content == (width, height):
        return labels
    rows = max(1, round(content[1] * labels.shape[0] / height))
    cols = max(1, round(content[0] * labels.shape[1] / width))
    return labels[:rows, :cols]


async def label_input(
    service: Service,
    served: ServedModel,
    x: np.ndarray,
    *,
    scores: bool = False,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> np.ndarray:
    """The model-sized uint8 labels of ``x``, an input the client prepared itself: (3, H, W) at
    the model's input size, in any float dtype (cast to the model's), or uint8 pixels for a
    model that takes them; with ``scores``, the model's float scores (classes, H, W) instead,
    through the model's scores lane. The batcher runs it with other requests' images. Raises
    ValueError for another shape; else as ``segment`` does."""
    spec = served.card.input
    if x.shape != (3, spec.height, spec.width):
        raise ValueError(f"expected (3, {spec.height}, {spec.width}), got {x.shape}")
    lane = await served.lanes.get((spec.height, spec.width), scores) if scores else served.batcher
    queued = lane.enqueue(np.ascontiguousarray(x, spec.dtype), deadline=deadline)
    done = await unless_gone(queued, client_gone)
    served.queue_wait.observe(done.queued_s)
    answer: np.ndarray = done.value
    return answer


async def score_image(
    service: Service,
    served: ServedModel,
    data: bytes,
    *,
    deadline: float,
    client_gone: Callable[[], Awaitable[None]] | None = None,
) -> tuple[np.ndarray, imaging.DecodedImage]:
    """The model's float scores (classes, H, W) for ``data`` stretched to its input size, and
    the decoded image. Raises as ``segment`` does."""
    stretch = policies.resolve(served.card.input, STRETCH, any_size=served.pool.any_size)
    args = (data, served.card, OutputFormat.png, service.settings.max_pixels, stretch)
    prepared = await service.run_cpu(prepare_input, *args)
    scores = await label_input(
        service, served, prepared.x, scores=True, deadline=deadline, client_gone=client_gone
    )
    return scores, prepared.decoded


def prepare_input(
    data: bytes,
    card: ModelCard,
    fmt: OutputFormat,
    max_pixels: int,
    policy: policies.Policy | None = None,
) -> Prepared:
    """``data`` decoded for ``fmt`` and prepared for ``card``'s model under ``policy`` (default:
    the card's own, which must not be tiles: those are prepared a band at a time)."""
    policy = policy or policies.resolve(card.input, CARD_POLICY, any_size=False)
    decoded = decode_input(data, card, fmt, max_pixels, policy)
    content = policies.content_size(policy, card.input, decoded.size)
    shape = policies.input_shape(policy, card.input, content)
    # native (and tiles, service.tiling) pad by repeating the image's edges: networks trained on
    # unpadded crops read a flat band of the mean colour as objects (docs/MODEL.md); letterbox
    # keeps its canvas of zeros.
    x = imaging.prepare(decoded.image, card.input, content, shape, edge=policy.resize == "native")
    return Prepared(decoded, x, content)


def decode_input(
    data: bytes,
    card: ModelCard,
    fmt: OutputFormat,
    max_pixels: int,
    policy: policies.Policy | None = None,
) -> imaging.DecodedImage:
    """``data`` decoded upright. png and rle only need the size the policy resizes the image to,
    so a big JPEG is decoded at a reduced scale; overlay blends at full size."""
    if fmt is OutputFormat.overlay:
        return imaging.decode(data, max_pixels=max_pixels)
    if policy is None or policy.resize == "stretch":
        return imaging.decode(
            data, max_pixels=max_pixels, min_size=(card.input.width, card.input.height)
        )
    return imaging.decode(
        data,
        max_pixels=max_pixels,
        min_size=lambda size: policies.content_size(policy, card.input, size),
    )


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
