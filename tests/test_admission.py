"""Admission by expected wait (service/admission.py): the estimate on a clock the test moves,
and a real server that refuses at once what it could not serve in time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.admission import Admission
from service.errors import Overloaded
from tests.images import encoded, scene
from tests.support import metric_samples, running_server, write_slow_model


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def served_one_at_a_time(admission: Admission, clock: Clock, count: int, each_s: float) -> None:
    for _ in range(count):
        admission.enter()
        clock.now += each_s
        admission.leave()


def served_in_parallel(admission: Admission, clock: Clock, count: int, each_s: float) -> None:
    """``count`` requests in flight together, finishing one every ``each_s``."""
    for _ in range(count):
        admission.enter()
    for _ in range(count):
        clock.now += each_s
        admission.leave()


def test_everything_is_admitted_before_the_capacity_is_known() -> None:
    admission = Admission(max_wait_s=0.01, clock=Clock())
    for _ in range(100):
        admission.enter()
    admission.check()


def test_a_lightly_loaded_server_admits_and_estimates_its_own_pace() -> None:
    clock = Clock()
    admission = Admission(max_wait_s=0.05, clock=clock)
    served_one_at_a_time(admission, clock, 40, 0.01)  # 0.4 s of 10 ms requests
    assert admission.capacity_per_s == pytest.approx(100, rel=0.05)
    admission.enter()
    admission.check()  # one ahead: ~10 ms


def test_a_backlog_past_the_budget_is_refused_with_retry_after() -> None:
    clock = Clock()
    admission = Admission(max_wait_s=0.25, clock=clock)
    served_in_parallel(admission, clock, 100, 0.005)  # 200 requests per busy second
    assert admission.capacity_per_s == pytest.approx(200, rel=0.05)
    for _ in range(45):  # 45 ahead: ~0.225 s
        admission.enter()
    admission.check()
    for _ in range(10):  # 55 ahead: ~0.275 s, over the budget
        admission.enter()
    with pytest.raises(Overloaded) as refused:
        admission.check()
    assert refused.value.headers == {"Retry-After": "1"}
    assert "limit 250 ms" in refused.value.detail


def test_windows_slowed_by_other_work_keep_the_best_recent_rate() -> None:
    """Refusals and other work on the cores slow a window down; the estimate must not follow,
    or clients that retry at once would drive it, and the goodput, ever lower."""
    clock = Clock()
    admission = Admission(max_wait_s=0.1, clock=clock)
    served_in_parallel(admission, clock, 100, 0.005)  # 0.5 s at 200 per busy second
    served_in_parallel(admission, clock, 60, 0.01)  # 0.6 s at 100 per busy second
    assert admission.capacity_per_s == pytest.approx(200, rel=0.05)
    for _ in range(19):  # 19 ahead: ~95 ms at 200/s (190 ms at the slowed pace)
        admission.enter()
    admission.check()


def test_a_slower_workload_replaces_the_estimate_within_two_seconds_of_busy_time() -> None:
    clock = Clock()
    admission = Admission(max_wait_s=0.1, clock=clock)
    served_in_parallel(admission, clock, 100, 0.005)
    served_in_parallel(admission, clock, 260, 0.01)  # 2.6 s at 100 per busy second
    assert admission.capacity_per_s == pytest.approx(100, rel=0.05)


def test_a_long_request_is_timed_from_its_start_not_from_the_window_it_ends_in() -> None:
    clock = Clock()
    admission = Admission(max_wait_s=0.1, clock=clock)
    admission.enter()  # a 1 s request
    clock.now += 0.99
    admission.enter()  # a short one near its end: the window closes with nothing finished
    for _ in range(2):
        clock.now += 0.01
        admission.leave()
    clock.now += 0.3
    admission.enter()  # closes the next window: 2 requests in 1.01 busy seconds, not 0.02
    assert admission.capacity_per_s == pytest.approx(2 / 1.01)


def test_no_budget_admits_everything() -> None:
    clock = Clock()
    admission = Admission(max_wait_s=0, clock=clock)
    served_in_parallel(admission, clock, 100, 0.005)
    for _ in range(10_000):
        admission.enter()
    admission.check()


def test_a_flooded_server_refuses_at_once_and_serves_what_it_admits(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_slow_model(repo, convs=30)  # ~0.1 s per image: a capacity of ~10 images/s
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(repo),
        "SEGSERVE_MAX_QUEUE_WAIT_MS": "150",
        "SEGSERVE_MAX_BATCH_SIZE": "1",
    }
    body = encoded(scene(1, 128, 128))
    with running_server(env, tmp_path / "server.log") as server, server.client() as client:
        for _ in range(8):  # measured one at a time first
            assert client.post("/segment", content=body).status_code == 200

        def one(_: int) -> tuple[int, str | None, str]:
            with server.client() as own:
                answer = own.post("/segment", content=body)
            code = answer.json()["code"] if answer.status_code != 200 else ""
            return answer.status_code, answer.headers.get("Retry-After"), code

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(one, range(24)))
        rejections = metric_samples(client)
    served = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert served
    assert refused
    assert all(a == (503, "1", "overloaded") for a in refused)
    # Each refusal is counted for the model it asked for, refused before its upload was read.
    labels = frozenset({("model", "slow"), ("reason", "overloaded")})
    assert rejections[("segserve_rejections_total", labels)] == len(refused)
