"""Awaiting queued work for a client that may leave: every place a request's items queue and
wait goes through these, so a client that goes away frees its places at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from service.batching import Batcher, Completed
from service.errors import ClientClosed

T = TypeVar("T")


async def unless_gone(
    queued: asyncio.Future[T], client_gone: Callable[[], Awaitable[None]] | None
) -> T:
    """``queued``'s result, unless ``client_gone`` completes first: then ``queued`` is cancelled
    (its items leave the queue) and ClientClosed is raised."""
    if client_gone is None:
        return await queued
    watcher: asyncio.Future[object] = asyncio.ensure_future(client_gone())
    # A callback, not asyncio.wait: no waiter future and callbacks on both per request.
    watcher.add_done_callback(lambda _: queued.cancel())
    try:
        return await queued
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():  # gone: its callback cancelled queued
            raise ClientClosed(
                "the client closed the connection before its answer was ready"
            ) from None
        raise  # this request cancelled: awaiting queued has cancelled it too
    finally:
        watcher.cancel()


def abandon(future: asyncio.Future[Any]) -> None:
    """Cancel ``future`` and take its outcome, so that nothing reports it as unretrieved."""
    future.cancel()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


def enqueue_all(
    lane: Batcher, inputs: list[np.ndarray], deadline: float
) -> asyncio.Future[list[Completed]]:
    """Every input queued, or none: a refusal withdraws those already queued."""
    queued: list[asyncio.Future[Completed]] = []
    try:
        for x in inputs:
            queued.append(lane.enqueue(x, deadline=deadline))
    except BaseException:
        for future in queued:
            abandon(future)
        raise
    return asyncio.gather(*queued)
