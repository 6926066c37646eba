"""A server's resident memory and CPU time, read from /proc (Linux), for server-side figures.

A server may be a process tree (LitServe forks inference workers), so both figures cover the
process and all its descendants. segserve is one process, or with SEGSERVE_PROCESSES > 1 a
supervisor and its server processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(child) for child in f.read().split()]
        i += 1
    return pids


def _rss_one(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def _cpu_one(pid: int, stat: str = "stat") -> float:
    with open(f"/proc/{pid}/{stat}") as f:
        # The command name may contain spaces: fields start after the last ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` plus its descendants' (shared pages count once per process)."""
    return int(_sum_over_tree(pid, _rss_one))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid``, its threads and its living descendants."""
    return _sum_over_tree(pid, _cpu_one)


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of the main thread of ``pid`` and of each living
    descendant: a segserve server process runs its event loop there (a supervisor's is idle)."""
    return _sum_over_tree(pid, lambda one: _cpu_one(one, f"task/{one}/stat"))


def _sum_over_tree(pid: int, measure: Callable[[int], float]) -> float:
    total = measure(pid)  # the root must exist: let its OSError through
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(OSError):  # a child may exit between listing and reading
            total += measure(child)
    return total


@dataclass(frozen=True)
class LoadAverage:
    one: float
    five: float
    fifteen: float

    def __str__(self) -> str:
        return f"{self.one:.2f} {self.five:.2f} {self.fifteen:.2f}"


def load_average() -> LoadAverage:
    return LoadAverage(*os.getloadavg())
