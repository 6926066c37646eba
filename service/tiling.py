"""The tiles policy's run: one request's windows through the model's scores lane, each blended
into the labels as its batch comes back (``service.policies.Stitcher``). ``service.pipeline``
decodes the image and checks the limits first."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np
from PIL import Image

from service import imaging, policies
from service.batching import Batcher, Completed
from service.core import ServedModel, Service
from service.model_card import ModelCard
from service.waiting import abandon, enqueue_all, unless_gone


class TileRun:
    """One tiles request's windows, a batch-sized chunk at a time with two chunks in flight (one
    queued or running while the next is prepared): a request never holds more than two batches'
    places in the queue (nor more than half of it, so that a request alone is never refused by
    its own windows), so other requests' images and windows keep getting in. A chunk's windows
    are blended as soon as it is back, so no window's scores outlive their chunk. Its CPU work
    always runs on the worker threads (``Service.workers``): it is long, so a request alone gains
    nothing from running it on the event loop, which it would hold up."""

    def __init__(
        self,
        service: Service,
        served: ServedModel,
        lane: Batcher,
        image: Image.Image,
        policy: policies.Policy,
        deadline: float,
        client_gone: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.service, self.served, self.lane, self.image = service, served, lane, image
        self.tile, self.deadline, self.client_gone = policy.tile, deadline, client_gone
        width, height = image.size
        xs = policies.tile_origins(width, policy.tile, policy.overlap)
        ys = policies.tile_origins(height, policy.tile, policy.overlap)
        self.positions = [(y, x) for y in ys for x in xs]
        self.stitcher = policies.Stitcher(image.size, policy.tile, served.card.num_classes)
        self.queue_s = self.infer_s = 0.0

    async def labels(self) -> np.ndarray:
        size = min(self.lane.max_batch_size, max(1, self.lane.max_queue // 2))
        ahead = 2 if self.lane.max_queue >= 2 else 1
        chunks = [self.positions[i : i + size] for i in range(0, len(self.positions), size)]
        in_flight: deque[tuple[list[tuple[int, int]], asyncio.Future[list[Completed]]]] = deque()
        try:
            for chunk in chunks:
                card = self.served.card
                inputs = await self.service.workers.run(windows, self.image, chunk, self.tile, card)
                in_flight.append((chunk, enqueue_all(self.lane, inputs, self.deadline)))
                if len(in_flight) == ahead:
                    await self._collect(*in_flight.popleft())
            while in_flight:
                await self._collect(*in_flight.popleft())
        finally:
            for _, queued in in_flight:  # a failure or a client gone: free their places
                abandon(queued)
        return await self.service.workers.run(self.stitcher.finish)

    async def _collect(
        self, chunk: list[tuple[int, int]], queued: asyncio.Future[list[Completed]]
    ) -> None:
        done = await unless_gone(queued, self.client_gone)
        for item in done:
            self.served.queue_wait.observe(item.queued_s)
        self.queue_s += max(item.queued_s for item in done)
        self.infer_s += max(item.run_s for item in done)
        scores = [item.value for item in done]
        await self.service.workers.run(self._blend, chunk, scores)

    def _blend(self, chunk: list[tuple[int, int]], scores: list[np.ndarray]) -> None:
        for (y, x), window in zip(chunk, scores, strict=True):
            self.stitcher.add(y, x, window)


def windows(
    image: Image.Image, positions: list[tuple[int, int]], tile: int, card: ModelCard
) -> list[np.ndarray]:
    """The model inputs of the windows at ``positions`` (y, x); past the image's edge (an image
    smaller than a window), its last column and row repeated, as ``native`` pads."""
    width, height = image.size
    return [
        imaging.normalized(
            np.asarray(image.crop((x, y, min(x + tile, width), min(y + tile, height)))),
            card.input,
            (tile, tile),
            edge=True,
        )
        for y, x in positions
    ]
