"""A process's resident memory and CPU time, read from /proc (Linux), for server-side figures."""

from __future__ import annotations

import os
from dataclasses import dataclass

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` (threads share it, so this is the whole server process)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and all its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces: fields start after the last ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


@dataclass(frozen=True)
class LoadAverage:
    one: float
    five: float
    fifteen: float

    def __str__(self) -> str:
        return f"{self.one:.2f} {self.five:.2f} {self.fifteen:.2f}"


def load_average() -> LoadAverage:
    return LoadAverage(*os.getloadavg())
