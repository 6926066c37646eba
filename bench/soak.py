"""Soak test: a long open-loop run at a fixed fraction of the measured maximum throughput.

    python -m bench.soak                         # 10 min at 70 % of max, default model, 640×480
    python -m bench.soak --duration 60 --plot /tmp/soak.png

1. Start the server (``bench.server``) on the model, or attach to one (``--url``, ``--server-pid``).
2. Measure its maximum throughput with a short closed-loop ``bench.loadtest`` run.
3. Offer ``fraction`` × that rate as Poisson arrivals, in back-to-back ``bench.loadtest`` segments
   (one latency figure per segment), while a sampler thread reads the server's RSS every few
   seconds from /proc.
4. Judge: no error at all, p99 of the last segment within ``p99_ratio`` × the first, RSS of the
   last segment within ``rss_growth`` of the first. Exit status 1 when any check fails.

Results: a JSON file (every segment and RSS sample) and a plot of throughput, latency and RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench import procstat
from bench.images import sample_jpeg
from bench.loadtest import LoadResult, LoadSpec, require_loopback
from bench.loadtest import run as run_load
from bench.server import DEFAULT_MODEL, serve

RESULTS = Path(__file__).resolve().parent / "results" / "soak"


@dataclass(frozen=True)
class SoakSpec:
    duration_s: float = 600.0
    fraction: float = 0.7  # of the measured maximum throughput
    segment_s: float = 60.0  # one latency percentile per segment
    probe_s: float = 20.0  # closed-loop run that measures the maximum
    probe_concurrency: int = 16
    rss_interval_s: float = 2.0
    p99_ratio: float = 1.5  # last segment's p99 may be at most this × the first's
    rss_growth: float = 0.10  # last segment's mean RSS at most this much above the first's
    format: str = "png"
    image: str = "small"  # bench.images kind: 640×480 photo-like JPEG
    client: str = "httpx"  # bench.loadtest's client: "httpx" or the lighter "raw"


@dataclass
class Segment:
    start_s: float  # since the soak began
    end_s: float
    offered_rps: float
    result: LoadResult


@dataclass
class SoakReport:
    spec: SoakSpec
    max_rps: float
    offered_rps: float
    segments: list[Segment]
    rss_mb: list[tuple[float, float]]  # (seconds since the soak began, MiB)
    load_1m: list[tuple[float, float]]  # (seconds since the soak began, 1-minute load average)
    load_average_start: str
    load_average_end: str
    errors: dict[str, int] = field(default_factory=dict)
    check_failures: list[str] = field(default_factory=list)
    p99_first_ms: float = 0.0
    p99_last_ms: float = 0.0
    rss_first_mb: float = 0.0
    rss_last_mb: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def judge(self) -> None:
        spec, first, last = self.spec, self.segments[0], self.segments[-1]
        for segment in self.segments:
            for status, count in segment.result.status_counts.items():
                if status != "200":
                    self.errors[status] = self.errors.get(status, 0) + count
            self.check_failures += segment.result.check_failures
        self.p99_first_ms = first.result.latency_ms["p99"]
        self.p99_last_ms = last.result.latency_ms["p99"]
        self.rss_first_mb = _mean_between(self.rss_mb, first.start_s, first.end_s)
        self.rss_last_mb = _mean_between(self.rss_mb, last.start_s, last.end_s)
        if self.errors:
            self.failures.append(f"errors: {self.errors}")
        if self.check_failures:
            self.failures.append(f"wrong answers: {self.check_failures[:3]}")
        if self.p99_last_ms > spec.p99_ratio * self.p99_first_ms:
            self.failures.append(
                f"p99 grew from {self.p99_first_ms:.1f} to "
                f"{self.p99_last_ms:.1f} ms (limit {spec.p99_ratio}×)"
            )
        if self.rss_last_mb > (1 + spec.rss_growth) * self.rss_first_mb:
            self.failures.append(
                f"RSS grew from {self.rss_first_mb:.1f} to "
                f"{self.rss_last_mb:.1f} MiB (limit +{spec.rss_growth:.0%})"
            )

    def summary(self) -> str:
        requests = sum(s.result.requests for s in self.segments)
        ok = sum(s.result.ok for s in self.segments)
        wall = self.segments[-1].end_s - self.segments[0].start_s
        loads = [load for _, load in self.load_1m] or [float("nan")]
        return "\n".join(
            [
                f"max throughput (closed loop, c={self.spec.probe_concurrency}): "
                f"{self.max_rps:.1f} req/s; offered {self.offered_rps:.1f} req/s "
                f"({self.spec.fraction:.0%}) for {wall:.0f} s",
                f"requests {requests}, 200 OK {ok}, errors {self.errors or 0}, "
                f"wrong answers {len(self.check_failures)}",
                f"p99 first segment {self.p99_first_ms:.1f} ms, last {self.p99_last_ms:.1f} ms "
                f"(ratio {self.p99_last_ms / self.p99_first_ms:.2f}, limit {self.spec.p99_ratio})",
                f"RSS first segment {self.rss_first_mb:.1f} MiB, last {self.rss_last_mb:.1f} MiB "
                f"(growth {self.rss_last_mb / self.rss_first_mb - 1:+.1%}, "
                f"limit +{self.spec.rss_growth:.0%})",
                f"load average at start {self.load_average_start}, at end {self.load_average_end}"
                f"; 1-min load during the soak: mean {statistics.fmean(loads):.1f}, "
                f"max {max(loads):.1f} on {os.cpu_count()} cores",
                "PASS" if self.passed else "FAIL: " + "; ".join(self.failures),
            ]
        )


def _mean_between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    inside = [mb for t, mb in samples if start <= t <= end]
    if not inside:  # a segment shorter than the sampling interval: take the nearest sample
        inside = [min(samples, key=lambda s: abs(s[0] - (start + end) / 2))[1]]
    return statistics.fmean(inside)


class RssSampler:
    """Reads the server's RSS (and the machine's load) every ``interval_s`` s on a thread."""

    def __init__(self, pid: int, interval_s: float, t0: float) -> None:
        self.pid, self.interval_s, self.t0 = pid, interval_s, t0
        self.samples: list[tuple[float, float]] = []
        self.load: list[tuple[float, float]] = []  # 1-minute load average: who else ran
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            now = time.perf_counter() - self.t0
            self.samples.append((round(now, 2), round(procstat.rss_bytes(self.pid) / 2**20, 1)))
            self.load.append((round(now, 2), procstat.load_average().one))
            if self._stop.wait(self.interval_s):
                return

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def soak(spec: SoakSpec, base_url: str, server_pid: int, progress: bool = True) -> SoakReport:
    """Measure the maximum, then hold ``fraction`` of it for ``duration_s``; judge the run."""
    require_loopback(base_url)
    base = LoadSpec(
        base_url=base_url,
        body=sample_jpeg(spec.image),
        format=spec.format,
        client=spec.client,
        server_pid=server_pid,
        progress=progress,
    )
    probe = run_load(
        replace(
            base,
            concurrency=spec.probe_concurrency,
            duration_s=spec.probe_s,
            warmup_s=min(2.0, spec.probe_s),
        )
    )
    if probe.ok == 0:
        raise SystemExit(f"the maximum-throughput probe got no answer: {probe.status_counts}")
    offered = spec.fraction * probe.throughput_rps
    _log(
        f"max {probe.throughput_rps:.1f} req/s (p99 {probe.latency_ms['p99']:.0f} ms); "
        f"soaking at {offered:.1f} req/s for {spec.duration_s:.0f} s"
    )

    load_start = str(procstat.load_average())
    t0 = time.perf_counter()
    segments: list[Segment] = []
    with RssSampler(server_pid, spec.rss_interval_s, t0).running() as sampler:
        # Whole segments, so the last one is as long as the first it is compared with.
        for index in range(max(1, round(spec.duration_s / spec.segment_s))):
            start = time.perf_counter() - t0
            result = run_load(
                replace(
                    base,
                    rate=offered,
                    concurrency=None,
                    warmup_s=0.0,
                    duration_s=spec.segment_s,
                    seed=index,
                )
            )
            segments.append(Segment(start, time.perf_counter() - t0, offered, result))
            _log(
                f"[{segments[-1].end_s:6.0f} s] {result.throughput_rps:6.1f} req/s, "
                f"p50 {result.latency_ms['p50']:.0f} ms, p99 {result.latency_ms['p99']:.0f} ms, "
                f"RSS {sampler.samples[-1][1]:.0f} MiB, statuses {result.status_counts}"
            )
    report = SoakReport(
        spec=spec,
        max_rps=probe.throughput_rps,
        offered_rps=offered,
        segments=segments,
        rss_mb=sampler.samples,
        load_1m=sampler.load,
        load_average_start=load_start,
        load_average_end=str(procstat.load_average()),
    )
    report.judge()
    return report


def plot(report: SoakReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = [(s.start_s + s.end_s) / 2 for s in report.segments]
    fig, (ax_rps, ax_lat, ax_rss, ax_load) = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    ax_rps.plot(mid, [s.result.throughput_rps for s in report.segments], "o-", label="served")
    ax_rps.axhline(report.offered_rps, color="grey", ls="--", label="offered")
    ax_rps.axhline(report.max_rps, color="red", ls=":", label="measured max")
    ax_rps.set_ylabel("requests/s")
    ax_rps.legend(loc="lower right")
    for name in ("p50", "p99"):
        ax_lat.plot(mid, [s.result.latency_ms[name] for s in report.segments], "o-", label=name)
    ax_lat.set_ylabel("latency, ms")
    ax_lat.set_yscale("log")  # a stall and a quiet minute differ by orders of magnitude
    ax_lat.legend(loc="lower right")
    ax_rss.plot([t for t, _ in report.rss_mb], [mb for _, mb in report.rss_mb])
    ax_rss.set_ylabel("server RSS, MiB")
    ax_rss.set_ylim(0, 1.15 * max(mb for _, mb in report.rss_mb))
    ax_load.plot([t for t, _ in report.load_1m], [load for _, load in report.load_1m])
    ax_load.axhline(os.cpu_count() or 1, color="grey", ls="--", label="CPU cores")
    ax_load.set_ylabel("load average (1 min)")
    ax_load.set_ylim(bottom=0)
    ax_load.legend(loc="lower right")
    ax_load.set_xlabel("seconds")
    fig.suptitle(
        f"segserve soak: {report.offered_rps:.1f} req/s "
        f"({report.spec.fraction:.0%} of max), {report.spec.image} JPEG, "
        f"format={report.spec.format}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakSpec()
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="model.onnx to serve (its repository folder is served)",
    )
    parser.add_argument("--url", help="attach to a running loopback server instead")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's PID (for RSS)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--fraction", type=float, default=defaults.fraction)
    parser.add_argument("--segment", type=float, default=defaults.segment_s, help="seconds")
    parser.add_argument("--probe", type=float, default=defaults.probe_s, help="seconds")
    parser.add_argument("--probe-concurrency", type=int, default=defaults.probe_concurrency)
    parser.add_argument("--rss-interval", type=float, default=defaults.rss_interval_s)
    parser.add_argument(
        "--p99-ratio",
        type=float,
        default=defaults.p99_ratio,
        help="pass: last segment's p99 <= this x the first's",
    )
    parser.add_argument(
        "--rss-growth",
        type=float,
        default=defaults.rss_growth,
        help="pass: last segment's RSS <= (1 + this) x the first's",
    )
    parser.add_argument("--format", default=defaults.format, choices=["png", "rle", "overlay"])
    parser.add_argument("--client", default=defaults.client, choices=["httpx", "raw"])
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if (args.url is None) != (args.server_pid is None):
        parser.error("--url and --server-pid go together")
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    spec = SoakSpec(
        duration_s=args.duration,
        fraction=args.fraction,
        segment_s=args.segment,
        probe_s=args.probe,
        probe_concurrency=args.probe_concurrency,
        rss_interval_s=args.rss_interval,
        p99_ratio=args.p99_ratio,
        rss_growth=args.rss_growth,
        format=args.format,
        client=args.client,
    )

    progress = not args.no_progress
    if args.url:
        report = soak(spec, args.url, args.server_pid, progress)
    else:
        log = args.json.with_suffix(".server.log")
        with serve("segserve", args.model.resolve(), log) as server:
            report = soak(spec, server.base_url, server.pid, progress)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(report) | {"passed": report.passed}, indent=1) + "\n")
    if args.plot:
        plot(report, args.plot)
    print(report.summary())
    if not report.passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
