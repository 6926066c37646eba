"""Threads that run blocking calls (decode, encode, inference) for the event loop, at a lower
CPU priority than it when asked (``nice``): on a saturated CPU the event loop, which admits,
refuses and answers requests, then runs as soon as it has work instead of waiting its turn
behind the data plane.

``await threads.run(fn, *args)`` costs one queue put to hand the work over and one
``call_soon_threadsafe`` to hand the answer back. ``loop.run_in_executor`` on a
``ThreadPoolExecutor`` also builds a concurrent Future (with its Condition and lock), a work
item and a second, wrapping asyncio future, and checks the thread count on every call: at three
hops per request that showed on the event loop's profile (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
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
    """``count`` daemon threads taking calls from one queue, first come first served, each at
    niceness ``nice`` (0: the process's own)."""

    def __init__(self, count: int, name: str, nice: int = 0) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, args=(nice,), name=f"{name}_{i}", daemon=True)
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

    def _work(self, nice: int) -> None:
        lower_this_thread(nice)
        while (job := self._jobs.get()) is not None:
            loop, answer, context, fn, args, kwargs = job
            try:
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor does
                loop.call_soon_threadsafe(_settle, answer, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, answer, result, None)


def lower_this_thread(nice: int) -> None:
    """Set the calling thread's nice value ``nice`` above the main thread's (Linux keeps one per
    thread, and threads it starts inherit it: ONNX Runtime's own, when a session is created on a
    lowered thread). Lowering needs no privilege; elsewhere, or for 0, nothing happens."""
    if nice > 0 and hasattr(os, "setpriority"):
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's (tid = pid)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(base + nice, 19))


def _settle(answer: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if answer.done():  # the awaiting request was cancelled meanwhile (client gone, shutdown)
        return
    if error is None:
        answer.set_result(result)
    else:
        answer.set_exception(error)
