"""The dynamic batcher, one behaviour per test, on a real event loop with a real run_batch.

``Recorder`` is the model: each item is a (1,)-array holding its id; the answer is the id + 1000,
so a mixed-up answer shows; it logs every batch it is given and can be held (a busy session)
or made to fail on a poison id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from service.batching import Batcher, Completed
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded

POISON = -1


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        ids = [int(v) for v in batch[:, 0]]
        self.batches.append(ids)
        await self.release.wait()
        if POISON in ids:
            raise RuntimeError("poisoned batch")
        return batch + 1000


def item(i: int) -> np.ndarray:
    return np.array([i], dtype=np.float32)


def later(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), timeout=20))


async def started(recorder: Recorder, **kwargs: Any) -> Batcher:
    options = {"max_batch_size": 4, "max_delay_s": 0.05, "max_queue": 64} | kwargs
    batcher = Batcher(recorder, **options, name="test")
    await batcher.start()
    return batcher


async def settle() -> None:
    """Let every ready task run (submits reach the queue, batches start)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_each_item_gets_its_own_answer_in_submission_order() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=8)
        results = await asyncio.gather(
            *(batcher.submit(item(i), deadline=later()) for i in range(20))
        )
        assert [int(r.value[0]) for r in results] == [1000 + i for i in range(20)]
        assert [i for batch in recorder.batches for i in batch] == list(range(20))
        await batcher.stop()

    run(scenario)


def test_batches_never_exceed_max_batch_size() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=3)
        results = await asyncio.gather(
            *(batcher.submit(item(i), deadline=later()) for i in range(10))
        )
        assert [len(b) for b in recorder.batches] == [3, 3, 3, 1]
        assert [r.batch_size for r in results] == [3] * 9 + [1]
        await batcher.stop()

    run(scenario)


def test_a_full_batch_starts_at_once_a_partial_one_after_the_delay() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=2, max_delay_s=0.5)
        t0 = time.monotonic()
        full = await asyncio.gather(
            batcher.submit(item(1), deadline=later()), batcher.submit(item(2), deadline=later())
        )
        full_s = time.monotonic() - t0
        t0 = time.monotonic()
        lone = await batcher.submit(item(3), deadline=later())
        lone_s = time.monotonic() - t0
        assert full_s < 0.4 <= 0.5 <= lone_s + 0.01
        assert [r.batch_size for r in [*full, lone]] == [2, 2, 1]
        assert lone.queued_s >= 0.49
        await batcher.stop()

    run(scenario)


def test_items_arriving_within_the_delay_share_a_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=8, max_delay_s=0.3)
        first = asyncio.ensure_future(batcher.submit(item(0), deadline=later()))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(item(i), deadline=later())) for i in (1, 2)]
        await asyncio.gather(first, *rest)
        assert recorder.batches == [[0, 1, 2]]
        await batcher.stop()

    run(scenario)


def test_an_item_past_its_deadline_is_answered_504_at_the_deadline_and_never_runs() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.release.clear()  # the only session is busy
        batcher = await started(recorder, max_batch_size=1, max_delay_s=0)
        busy = asyncio.ensure_future(batcher.submit(item(1), deadline=later()))
        await settle()
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(item(2), deadline=time.monotonic() + 0.1)
        assert 0.09 <= time.monotonic() - t0 < 1.0  # answered at its deadline, not later
        assert batcher.depth == 0
        recorder.release.set()
        assert int((await busy).value[0]) == 1001
        with pytest.raises(DeadlineExceeded):  # already late on arrival
            await batcher.submit(item(3), deadline=time.monotonic() - 1)
        await batcher.stop()
        assert recorder.batches == [[1]]

    run(scenario)


def test_a_full_queue_refuses_with_overloaded_and_recovers() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = await started(recorder, max_batch_size=2, max_delay_s=0, max_queue=3)
        running = asyncio.ensure_future(batcher.submit(item(0), deadline=later()))
        await settle()  # item 0 is in the running batch, the queue is empty
        queued = [
            asyncio.ensure_future(batcher.submit(item(i), deadline=later())) for i in (1, 2, 3)
        ]
        await settle()
        assert batcher.depth == 3
        with pytest.raises(Overloaded):
            batcher.check_capacity()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(item(4), deadline=later())
        assert refused.value.headers["Retry-After"]
        recorder.release.set()
        answers = await asyncio.gather(running, *queued)
        assert [int(a.value[0]) for a in answers] == [1000, 1001, 1002, 1003]
        batcher.check_capacity()  # room again
        assert int((await batcher.submit(item(5), deadline=later())).value[0]) == 1005
        await batcher.stop()

    run(scenario)


def test_a_cancelled_waiter_frees_its_place_and_never_runs() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = await started(recorder, max_batch_size=4, max_delay_s=0, max_queue=2)
        running = asyncio.ensure_future(batcher.submit(item(0), deadline=later()))
        await settle()
        gone = asyncio.ensure_future(batcher.submit(item(1), deadline=later()))
        stays = asyncio.ensure_future(batcher.submit(item(2), deadline=later()))
        await settle()
        assert batcher.depth == 2
        gone.cancel()
        await settle()
        assert batcher.depth == 1  # its place is free again ...
        newcomer = asyncio.ensure_future(batcher.submit(item(3), deadline=later()))
        await settle()
        recorder.release.set()
        await asyncio.gather(running, stays, newcomer)
        assert recorder.batches == [[0], [2, 3]]  # ... and it never ran
        await batcher.stop()

    run(scenario)


def test_an_inference_error_fails_only_its_own_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=2, max_delay_s=0.01)
        outcomes = await asyncio.gather(
            *(batcher.submit(item(i), deadline=later()) for i in (1, POISON, 3, 4)),
            return_exceptions=True,
        )
        assert [type(o) for o in outcomes] == [
            InferenceFailed,
            InferenceFailed,
            Completed,
            Completed,
        ]
        assert "Traceback" not in str(outcomes[0])
        assert int((await batcher.submit(item(5), deadline=later())).value[0]) == 1005
        await batcher.stop()

    run(scenario)


def test_stop_finishes_queued_work_then_refuses_new_items() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=4, max_delay_s=10.0)
        queued = [
            asyncio.ensure_future(batcher.submit(item(i), deadline=later())) for i in range(3)
        ]
        await settle()
        assert batcher.depth == 3  # waiting for a 10 s batch window ...
        t0 = time.monotonic()
        await batcher.stop()  # ... which stop() does not wait for
        assert time.monotonic() - t0 < 5
        assert [int((await q).value[0]) for q in queued] == [1000, 1001, 1002]
        with pytest.raises(NotReady):
            await batcher.submit(item(9), deadline=later())

    run(scenario)


def test_concurrency_runs_batches_side_by_side() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = await started(recorder, max_batch_size=1, max_delay_s=0, concurrency=2)
        waiting = [
            asyncio.ensure_future(batcher.submit(item(i), deadline=later())) for i in range(3)
        ]
        await settle()
        assert recorder.batches == [[0], [1]]  # two sessions busy, the third item queued
        assert batcher.depth == 1
        recorder.release.set()
        await asyncio.gather(*waiting)
        await batcher.stop()

    run(scenario)


def test_items_of_another_shape_are_refused() -> None:
    async def scenario() -> None:
        batcher = await started(Recorder())
        await batcher.submit(item(1), deadline=later())
        with pytest.raises(ValueError, match="takes items of"):
            await batcher.submit(np.zeros((2,), np.float32), deadline=later())
        await batcher.stop()

    run(scenario)


def test_eager_batcher_does_not_wait_when_nothing_is_announced() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(
            recorder, max_batch_size=8, max_delay_s=5.0, wait_for_announced=True
        )
        t0 = time.monotonic()
        await batcher.submit(item(1), deadline=later())
        assert time.monotonic() - t0 < 2.5  # not the 5 s window
        await batcher.stop()

    run(scenario)


def test_eager_batcher_waits_for_an_announced_item_and_batches_it() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(
            recorder, max_batch_size=8, max_delay_s=5.0, wait_for_announced=True
        )
        preparing = batcher.announce()
        preparing.__enter__()
        first = asyncio.ensure_future(batcher.submit(item(1), deadline=later()))
        await asyncio.sleep(0.05)
        assert not first.done()  # held: another item is on its way
        preparing.__exit__(None, None, None)
        second = asyncio.ensure_future(batcher.submit(item(2), deadline=later()))
        await asyncio.gather(first, second)
        assert recorder.batches == [[1, 2]]
        await batcher.stop()

    run(scenario)


def test_an_announced_item_that_fails_to_come_releases_the_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = await started(
            recorder, max_batch_size=8, max_delay_s=5.0, wait_for_announced=True
        )
        t0 = time.monotonic()
        waiting = asyncio.ensure_future(batcher.submit(item(1), deadline=later()))

        async def prepare_and_fail() -> None:
            with batcher.announce():
                await asyncio.sleep(0.05)
                assert not waiting.done()  # held for the announced item ...
                raise ValueError("undecodable")  # ... which never comes

        with pytest.raises(ValueError, match="undecodable"):
            await prepare_and_fail()
        assert int((await waiting).value[0]) == 1001
        assert time.monotonic() - t0 < 2.5
        await batcher.stop()

    run(scenario)


def test_enqueue_queues_at_once_and_a_cancelled_future_withdraws_the_item() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = await started(recorder, max_batch_size=4, max_delay_s=0)
        running = batcher.enqueue(item(0), deadline=later())
        await settle()  # item 0 is running; the session is busy
        withdrawn = batcher.enqueue(item(1), deadline=later())
        kept = batcher.enqueue(item(2), deadline=later())
        assert batcher.depth == 2  # queued on return, no await needed
        withdrawn.cancel()
        await settle()
        assert batcher.depth == 1
        recorder.release.set()
        assert [int((await f).value[0]) for f in (running, kept)] == [1000, 1002]
        assert recorder.batches == [[0], [2]]
        await batcher.stop()

    run(scenario)
