"""The dynamic batcher: one per served model, it turns concurrent requests into batches.

Public API (everything else is private)::

    batcher = Batcher(run_batch, max_batch_size=8, max_delay_s=0.005, max_queue=256,
                      concurrency=1, name="shapes-fcn:1", wait_for_announced=False)
    await batcher.start()
    done = await batcher.submit(x, deadline=time.monotonic() + 30.0)  # -> Completed
    done.value, done.queued_s, done.run_s, done.batch_size
    batcher.depth             # items waiting in the queue (not yet in a batch); on_depth(n)
                              # is called with the new depth whenever it changes
    batcher.check_capacity()  # raises Overloaded now if submit would (refuse before decoding)
    await batcher.stop()      # refuse new items, finish every queued one, wait for the batches

    # The server's way in: announce an item while preparing it, queue it without an await.
    with batcher.announce():
        x = prepare(...)
        future = batcher.enqueue(x, deadline=...)  # queued on return; cancel() withdraws it
    done = await future

``run_batch(batch) -> outputs`` is an async callable; ``batch`` is a view of a preallocated
``(n, *x.shape)`` array (valid only during the call; kept for the next batch unless
``keep_buffers=False``) and ``outputs[i]`` is item i's answer.
Every item submitted gets exactly one outcome:

- its row of the outputs (``Completed``), in the order items were submitted within a batch;
- ``Overloaded`` at once when ``max_queue`` items are already waiting (backpressure): this
  batcher's own, or those ``queued()`` counts when given (the batchers of one model version
  share one queue budget);
- ``DeadlineExceeded`` when its deadline (``time.monotonic()`` seconds) passes before it is
  taken into a batch; the waiter is answered at the deadline, not when a batch next forms;
- ``InferenceFailed`` when ``run_batch`` raises: only that batch's items fail, the loop goes on;
- ``NotReady`` when submitted after ``stop()`` began;
- cancellation of the waiting ``submit`` call or of ``enqueue``'s future (client disconnected)
  removes the item from the queue, so it frees its place and never runs.

A batch is started as soon as ``max_batch_size`` items are queued, or ``max_delay_s`` after its
first item *arrived* (an item that already waited for a busy session is not held back further).
With ``wait_for_announced=True`` it also starts as soon as no announced item is still being
prepared: the delay is only spent when more items are actually on their way, so a lone request
is not held back at all. Up to ``concurrency`` batches run at once (one per ONNX Runtime
session); while all are busy items keep queueing, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded

log = logging.getLogger("segserve.batching")

RunBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class Completed:
    """One item's answer and how long it spent where."""

    value: np.ndarray
    queued_s: float  # arrival -> its batch started running
    run_s: float  # the batch's run_batch call
    batch_size: int


@dataclass(eq=False, slots=True)
class _Item:
    x: np.ndarray
    deadline: float
    arrived: float
    future: asyncio.Future[Completed]
    expiry: asyncio.TimerHandle | None = field(default=None)


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        concurrency: int = 1,
        name: str = "batcher",
        wait_for_announced: bool = False,
        on_depth: Callable[[int], None] | None = None,
        queued: Callable[[], int] | None = None,
        keep_buffers: bool = True,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or concurrency < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size, max_queue, concurrency >= 1 and max_delay_s >= 0")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._run_batch = run_batch
        self._queue: deque[_Item] = deque()
        self._arrival = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._free_buffers: list[np.ndarray] = []
        self._item_layout: tuple[tuple[int, ...], np.dtype] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wait_for_announced = wait_for_announced
        self._announced = 0  # items being prepared for submit (see announce)
        self._on_depth = on_depth
        self._queued = queued
        self._keep_buffers = keep_buffers

    @property
    def depth(self) -> int:
        return len(self._queue)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """Mark an item as on its way while the caller prepares it; ``enqueue`` it in the block.

        Only counts what is announced; with ``wait_for_announced`` a batch waits for these (up to
        ``max_delay_s``) and for nothing else."""
        self._announced += 1
        try:
            yield
        except BaseException:
            self._arrival.set()  # it will not come: let a waiting batch re-decide
            raise
        finally:
            self._announced -= 1

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        """Refuse new items, run every queued one, and wait until all batches have finished."""
        self._stopping = True
        self._arrival.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, x: np.ndarray, *, deadline: float) -> Completed:
        return await self.enqueue(x, deadline=deadline)

    def enqueue(self, x: np.ndarray, *, deadline: float) -> asyncio.Future[Completed]:
        """``submit`` without waiting: the item is queued when this returns (no await between,
        which ``announce`` relies on); cancelling the future withdraws the item."""
        if self._stopping or self._loop_task is None:
            raise NotReady(f"model {self.name} is not accepting requests (stopped or not started)")
        self._check_layout(x)
        self.check_capacity()
        loop = asyncio.get_running_loop()
        item = _Item(x, deadline, time.monotonic(), loop.create_future())
        item.expiry = loop.call_at(_to_loop_time(loop, deadline), self._expire, item)
        item.future.add_done_callback(
            lambda done: self._discard(item) if done.cancelled() else None
        )
        self._queue.append(item)
        self._depth_changed()
        self._arrival.set()
        return item.future

    def check_capacity(self) -> None:
        """Raise Overloaded when the queue is full: lets a caller refuse before costly work."""
        queued = len(self._queue) if self._queued is None else self._queued()
        if queued >= self.max_queue:
            raise Overloaded(f"model {self.name} has {queued} images queued; retry later")

    def _check_layout(self, x: np.ndarray) -> None:
        layout = (x.shape, x.dtype)
        if self._item_layout is None:
            self._item_layout = layout
        elif layout != self._item_layout:
            raise ValueError(f"{self.name} takes items of {self._item_layout}, got {layout}")

    def _discard(self, item: _Item) -> None:
        """Take a waiting item out of the queue (its waiter went away or its deadline passed)."""
        if item.expiry is not None:
            item.expiry.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(item)
            self._depth_changed()

    def _expire(self, item: _Item) -> None:
        if not item.future.done():
            self._discard(item)
            self._deadline_passed(item)

    def _deadline_passed(self, item: _Item) -> None:
        waited_ms = (time.monotonic() - item.arrived) * 1000
        item.future.set_exception(
            DeadlineExceeded(
                f"request waited {waited_ms:.0f} ms for model {self.name} "
                "and passed its deadline before inference"
            )
        )

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            items = await self._collect()
            if not items:  # stopping and nothing left
                self._slots.release()
                return
            task = asyncio.create_task(self._execute(items), name=f"batch:{self.name}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Item]:
        """Wait until a batch is due and take it from the queue; [] once stopped and empty.

        Items stay queued (counted by ``depth``, subject to their deadline and cancellation)
        until their batch closes: when ``max_batch_size`` are waiting, when the oldest has waited
        ``max_delay_s``, or at once while stopping.
        """
        while True:
            await self._batch_due()
            if not self._queue:
                return []  # stopping, nothing left
            items: list[_Item] = []
            now = time.monotonic()
            while self._queue and len(items) < self.max_batch_size:
                item = self._queue.popleft()
                if item.expiry is not None:
                    item.expiry.cancel()
                if item.future.done():  # cancelled; its waiter has not run to remove it yet
                    continue
                if item.deadline <= now:  # its timer is due but has not run yet
                    self._deadline_passed(item)
                else:
                    items.append(item)
            self._depth_changed()
            if items:
                return items

    async def _batch_due(self) -> None:
        while not self._stopping:
            wait_s: float | None = None
            if self._queue:
                if len(self._queue) >= self.max_batch_size:
                    return
                if self._wait_for_announced and self._announced == 0:
                    return  # nothing else is on its way: waiting would only add latency
                wait_s = self._queue[0].arrived + self.max_delay_s - time.monotonic()
                if wait_s <= 0:
                    return
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), wait_s)

    async def _execute(self, items: list[_Item]) -> None:
        buffer = self._buffer(items[0].x)
        try:
            # Waiters cancelled after the batch was taken (before this task ran) must not run.
            items = [item for item in items if not item.future.done()]
            if items:
                await self._run(items, buffer)
        finally:
            if self._keep_buffers:
                self._free_buffers.append(buffer)
            self._slots.release()

    async def _run(self, items: list[_Item], buffer: np.ndarray) -> None:
        n = len(items)
        for i, item in enumerate(items):
            buffer[i] = item.x
        started = time.monotonic()
        try:
            outputs = await self._run_batch(buffer[:n])
            if len(outputs) != n:
                raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {n} inputs")
        except Exception:
            log.exception("inference failed for a batch of %d on %s", n, self.name)
            self._fail(items)
            return
        except asyncio.CancelledError:  # the server is being torn down: still answer everyone
            self._fail(items)
            raise
        run_s = time.monotonic() - started
        for i, item in enumerate(items):
            if not item.future.done():
                item.future.set_result(Completed(outputs[i], started - item.arrived, run_s, n))

    def _fail(self, items: list[_Item]) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(InferenceFailed(f"inference failed on model {self.name}"))

    def _buffer(self, x: np.ndarray) -> np.ndarray:
        """A reusable (max_batch_size, *x.shape) array: one per concurrently running batch."""
        if self._free_buffers:
            return self._free_buffers.pop()
        return np.empty((self.max_batch_size, *x.shape), dtype=x.dtype)


def _to_loop_time(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """Convert a ``time.monotonic()`` instant to the loop's clock (the same clock on CPython,
    but the loop may be uvloop, whose clock is its own)."""
    return loop.time() + (deadline - time.monotonic())
