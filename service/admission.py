"""Admission by expected wait: refuse a request at once when the work already in the server
would keep it waiting longer than ``max_wait_s``, instead of letting every queue grow.

Little's law: a request arriving now waits about ``in_flight / capacity`` for the requests
ahead of it, where capacity is the rate at which requests leave the server while it is busy
(requests finished per busy second, so that a lightly loaded server does not look slow),
measured over quarter-second windows. The estimate is the best of the last ``_PEAK_WINDOWS``
windows (2 s of busy time), not their average: the rate a window measures falls whenever
something else takes the cores, and refusals are such a thing. Clients that send a refused
request again at once make the event loop refuse more, the workers finish less, a falling
estimate refuses still more, and the server settles at a fraction of its goodput
(docs/PERFORMANCE.md). Holding the best recent rate keeps one slow window from starting that;
a workload that is really slower replaces it within 2 s of busy time. A budget below the wait
such clients make on their own (32 of them on a 2-core machine: ~60 ms) still ends there: the
budget is for clients that back off when told. A refusal costs no decode and no queue place (it
comes before the body is read) and says when to come back (``Retry-After``).

    admission = Admission(max_wait_s=0.25)
    admission.check()        # Overloaded when the expected wait is over the budget
    admission.enter(); ...; admission.leave()   # around every admitted request
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from service.errors import Overloaded

_WINDOW_S = 0.25  # capacity is measured over windows this long
_PEAK_WINDOWS = 8  # ...and estimated as the best of the last this many (2 s of busy time)


class Admission:
    def __init__(self, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_wait_s = max_wait_s  # 0: admit everything (the deadline still applies)
        self.in_flight = 0
        self._rates: deque[float] = deque(maxlen=_PEAK_WINDOWS)  # of the last busy windows
        self._clock = clock
        self._window_start = self._clock()
        self._busy_s = 0.0
        self._busy_since: float | None = None
        self._finished = 0

    @property
    def capacity_per_s(self) -> float | None:
        """Requests finished per busy second: the best recent window (None until one ended)."""
        return max(self._rates) if self._rates else None

    def expected_wait_s(self) -> float:
        """How long the requests in flight keep a new one waiting (0 until measured)."""
        capacity = self.capacity_per_s
        return self.in_flight / capacity if capacity else 0.0

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
        """Close the measuring window when it is over: record its rate. A window in which nothing
        finished carries its busy time into the next, so that a long request is timed from its
        start rather than from the window it happened to finish in."""
        if now - self._window_start < _WINDOW_S:
            return now
        busy_s = self._busy_s
        if self._busy_since is not None:
            busy_s += now - self._busy_since
            self._busy_since = now
        if self._finished and busy_s > 0:
            self._rates.append(self._finished / busy_s)
            busy_s, self._finished = 0.0, 0
        self._window_start, self._busy_s = now, busy_s
        return now
