"""Threads that run blocking calls (decode, encode, inference) for the event loop.

``await threads.run(fn, *args)`` costs one queue put to hand the work over and one
``call_soon_threadsafe`` to hand the answer back. ``loop.run_in_executor`` on a
``ThreadPoolExecutor`` also builds a concurrent Future (with its Condition and lock), a work
item and a second, wrapping asyncio future, and checks the thread count on every call: at three
hops per request that showed on the event loop's profile (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    dict[str, Any],
]


class WorkerThreads:
    """``count`` daemon threads taking calls from one queue, first come first served."""

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a thread, in a copy of the caller's context (log lines from
        the thread keep the request id). Cancelling the await does not stop a call under way."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, answer, contextvars.copy_context(), fn, args, kwargs))
        return await answer

    def shutdown(self) -> None:
        """Finish the calls already queued, then stop the threads (blocking)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, answer, context, fn, args, kwargs = job
            try:
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor does
                loop.call_soon_threadsafe(_settle, answer, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, answer, result, None)


def _settle(answer: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if answer.done():  # the awaiting request was cancelled meanwhile (client gone, shutdown)
        return
    if error is None:
        answer.set_result(result)
    else:
        answer.set_exception(error)
