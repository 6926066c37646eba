"""Properties of the dynamic batcher under random arrivals, deadlines, cancellations and failures.

Every example drives a real ``Batcher`` on a real event loop. ``run_batch`` is a real function
whose output identifies its input (each row's answer is the id written into that row), so a
mixed-up answer cannot go unnoticed; a batch holding a "poison" id fails, as an inference error
would. Clients come in both ways the batcher offers: ``submit``, and the server's
``announce`` → prepare → ``enqueue``. The log of events (queueing, batch starts,
cancellations) is totally ordered by a counter, which is exact on a single-threaded event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.batching import Batcher, Completed
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded

ITEM_SHAPE = (2, 3)  # small, but more than a scalar: ids are checked in every cell
POISON = -1.0  # a batch containing an item with this marker fails


@dataclass(frozen=True)
class Request:
    gap_ms: float  # wait before submitting, after the previous submission
    deadline_ms: float  # relative to its submission
    cancel_after_ms: float | None  # the client goes away this long after submitting
    poison: bool
    # None: ``submit``. Else the server's way in: ``announce``, prepare this long, ``enqueue``.
    prepare_ms: float | None


@dataclass(frozen=True)
class Config:
    max_batch_size: int
    max_delay_ms: float
    max_queue: int
    concurrency: int
    run_ms: float  # how long one batch "infers"
    wait_for_announced: bool


@dataclass
class Log:
    clock: int = 0
    batches: list[tuple[int, list[int]]] = field(default_factory=list)  # (start tick, ids)
    enqueued: dict[int, int] = field(default_factory=dict)  # id -> tick it entered the queue
    failed_batches: set[int] = field(default_factory=set)  # indexes into batches

    def tick(self) -> int:
        self.clock += 1
        return self.clock


@dataclass
class Outcome:
    request_id: int
    submitted_at: float
    deadline: float
    kind: str = "pending"  # completed | overloaded | deadline | failed | cancelled
    value: np.ndarray | None = None
    batch_size: int | None = None
    answered_at: float | None = None
    cancelled_tick: int | None = None
    depth_at_submit: int | None = None  # the queue depth the admission check saw, if reached


def _item(request_id: int, poison: bool) -> np.ndarray:
    x = np.full(ITEM_SHAPE, float(request_id), dtype=np.float32)
    if poison:
        x[0, 0] = POISON
    return x


async def _scenario(config: Config, requests: list[Request]) -> tuple[Log, list[Outcome]]:
    log = Log()

    async def run_batch(batch: np.ndarray) -> np.ndarray:
        ids = [int(row[-1, -1]) for row in batch]
        log.batches.append((log.tick(), ids))
        index = len(log.batches) - 1
        await asyncio.sleep(config.run_ms / 1000)
        if (batch[:, 0, 0] == POISON).any():
            log.failed_batches.add(index)
            raise RuntimeError("poisoned batch")
        return batch[:, -1, -1] + 0.0  # a new array: each row's own id

    batcher = Batcher(
        run_batch,
        max_batch_size=config.max_batch_size,
        max_delay_s=config.max_delay_ms / 1000,
        max_queue=config.max_queue,
        concurrency=config.concurrency,
        name="property",
        wait_for_announced=config.wait_for_announced,
    )
    await batcher.start()
    outcomes: list[Outcome] = []
    tasks: list[asyncio.Task[None]] = []

    async def client(request_id: int, request: Request) -> None:
        now = time.monotonic()
        outcome = Outcome(request_id, now, now + request.deadline_ms / 1000)
        outcomes.append(outcome)
        x = _item(request_id, request.poison)

        def admit() -> None:  # the depth the admission check sees, and the queue order
            outcome.depth_at_submit = batcher.depth
            if batcher.depth < config.max_queue:
                log.enqueued[request_id] = log.tick()

        try:
            if request.prepare_ms is None:
                admit()  # submit() checks the queue before its first await: this is exact
                done: Completed = await batcher.submit(x, deadline=outcome.deadline)
            else:
                with batcher.announce():
                    await asyncio.sleep(request.prepare_ms / 1000)  # decoding, in a thread
                    admit()
                    future = batcher.enqueue(x, deadline=outcome.deadline)
                done = await future
            outcome.kind, outcome.value = "completed", done.value
            outcome.batch_size = done.batch_size
        except Overloaded:
            outcome.kind = "overloaded"
        except DeadlineExceeded:
            outcome.kind = "deadline"
        except InferenceFailed:
            outcome.kind = "failed"
        except asyncio.CancelledError:
            outcome.kind, outcome.cancelled_tick = "cancelled", log.tick()
            raise
        finally:
            outcome.answered_at = time.monotonic()

    async def cancel_later(task: asyncio.Task[None], delay_ms: float) -> None:
        await asyncio.sleep(delay_ms / 1000)
        task.cancel()

    for request_id, request in enumerate(requests):
        await asyncio.sleep(request.gap_ms / 1000)
        task = asyncio.create_task(client(request_id, request))
        tasks.append(task)
        if request.cancel_after_ms is not None:
            tasks.append(asyncio.create_task(cancel_later(task, request.cancel_after_ms)))
    # Bounded: a lost answer shows up as a timeout here, not as a hung test.
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    assert batcher.depth == 0
    await asyncio.wait_for(batcher.stop(), timeout=10)
    return log, outcomes


configs = st.builds(
    Config,
    max_batch_size=st.integers(1, 6),
    max_delay_ms=st.sampled_from([0.0, 1.0, 3.0]),
    max_queue=st.integers(1, 10),
    concurrency=st.integers(1, 3),
    run_ms=st.sampled_from([0.0, 1.0, 4.0]),
    wait_for_announced=st.booleans(),
)
request_lists = st.lists(
    st.builds(
        Request,
        gap_ms=st.sampled_from([0.0, 0.0, 0.5, 2.0]),
        deadline_ms=st.sampled_from([1.0, 5.0, 20.0, 10_000.0]),
        cancel_after_ms=st.none() | st.sampled_from([0.0, 1.0, 5.0]),
        poison=st.integers(0, 9).map(lambda n: n == 0),  # one batch in a few fails
        prepare_ms=st.none() | st.sampled_from([0.0, 1.0, 3.0]),
    ),
    min_size=1,
    max_size=24,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, requests=request_lists)
def test_every_request_gets_exactly_its_own_answer_or_a_typed_refusal(
    config: Config, requests: list[Request]
) -> None:
    log, outcomes = asyncio.run(_scenario(config, requests))

    assert sorted(o.request_id for o in outcomes) == list(range(len(requests)))
    run_ids = [i for _, ids in log.batches for i in ids]
    assert len(run_ids) == len(set(run_ids)), "an item ran in two batches"
    batch_of = {i: index for index, (_, ids) in enumerate(log.batches) for i in ids}

    for index, (_, ids) in enumerate(log.batches):
        assert 1 <= len(ids) <= config.max_batch_size
        queued = [log.enqueued[i] for i in ids]
        assert queued == sorted(queued), "a batch is not in queue (FIFO) order"
        poisoned = any(requests[i].poison for i in ids)
        assert (index in log.failed_batches) == poisoned

    for o in outcomes:
        assert o.kind != "pending", f"request {o.request_id} got no answer"
        batch = batch_of.get(o.request_id)  # index of the batch it ran in, if it ran
        if o.kind == "completed":
            # Its own answer, from the batch it ran in, which did not fail.
            assert o.value is not None
            assert float(o.value) == o.request_id
            assert batch is not None
            assert batch not in log.failed_batches
            assert o.batch_size == len(log.batches[batch][1])
        elif o.kind == "failed":
            assert batch in log.failed_batches
        elif o.kind == "overloaded":
            assert o.depth_at_submit >= config.max_queue
            assert batch is None
        elif o.kind == "deadline":
            assert batch is None, "an expired item was still run"
            assert o.answered_at is not None
            assert o.answered_at >= o.deadline - 0.002, "answered before its deadline"
        elif o.kind == "cancelled" and batch is not None:
            # A client that left before its item was taken frees the slot: the item never runs.
            assert o.cancelled_tick is not None
            assert log.batches[batch][0] < o.cancelled_tick
        if o.kind != "overloaded" and o.depth_at_submit is not None:
            assert o.depth_at_submit < config.max_queue, "admitted past the queue bound"
