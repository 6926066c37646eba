"""Admission by expected wait: refuse a request at once when the work already in the server
would keep it waiting longer than ``max_wait_s``, instead of letting every queue grow.

Little's law: a request arriving now waits about ``in_flight / capacity`` for the requests
ahead of it, where capacity is the rate at which requests leave the server while it is busy
(requests finished per busy second, so that a lightly loaded server does not look slow). The
estimate is smoothed over quarter-second windows. A refusal costs no decode and no queue place
(it comes before the body is read) and says when to come back (``Retry-After``).

    admission = Admission(max_wait_s=0.25)
    admission.check()        # Overloaded when the expected wait is over the budget
    admission.enter(); ...; admission.leave()   # around every admitted request
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from service.errors import Overloaded

_WINDOW_S = 0.25  # capacity is measured over windows this long
_SMOOTHING = 0.3  # weight of the newest window in the estimate


class Admission:
    def __init__(self, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_wait_s = max_wait_s  # 0: admit everything (the deadline still applies)
        self.in_flight = 0
        self.capacity_per_s: float | None = None  # None until a busy window has ended
        self._clock = clock
        self._window_start = self._clock()
        self._busy_s = 0.0
        self._busy_since: float | None = None
        self._finished = 0

    def expected_wait_s(self) -> float:
        """How long the requests in flight keep a new one waiting (0 until measured)."""
        if not self.capacity_per_s:
            return 0.0
        return self.in_flight / self.capacity_per_s

    def check(self) -> None:
        """Raise Overloaded (with Retry-After) when the expected wait exceeds the budget."""
        if self.max_wait_s <= 0:
            return
        wait_s = self.expected_wait_s()
        if wait_s > self.max_wait_s:
            raise Overloaded(
                f"the server would keep this request waiting about {wait_s * 1000:.0f} ms "
                f"(limit {self.max_wait_s * 1000:.0f} ms); retry later",
                retry_after_s=max(1, math.ceil(wait_s)),
            )

    def enter(self) -> None:
        now = self._roll(self._clock())
        if self.in_flight == 0:
            self._busy_since = now
        self.in_flight += 1

    def leave(self) -> None:
        now = self._roll(self._clock())
        self.in_flight -= 1
        self._finished += 1
        if self.in_flight == 0 and self._busy_since is not None:
            self._busy_s += now - self._busy_since
            self._busy_since = None

    def _roll(self, now: float) -> float:
        """Close the measuring window when it is over: fold its capacity into the estimate."""
        if now - self._window_start < _WINDOW_S:
            return now
        busy_s = self._busy_s
        if self._busy_since is not None:
            busy_s += now - self._busy_since
            self._busy_since = now
        if busy_s > 0 and self._finished:
            measured = self._finished / busy_s
            previous = self.capacity_per_s
            self.capacity_per_s = (
                measured
                if previous is None
                else _SMOOTHING * measured + (1 - _SMOOTHING) * previous
            )
        self._window_start, self._busy_s, self._finished = now, 0.0, 0
        return now
