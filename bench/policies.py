"""The input policies' targets (docs/PERFORMANCE.md), measured in one run and judged.

    python -m bench.policies                      # the bundled models, ~4 minutes on 2 cores
    python -m bench.policies --model my/1/model.onnx --today my/0/model.onnx --tile 256

1. tiled throughput through the service (windows/s, 4000x3000 JPEGs, concurrency 8) >= 0.9 x
   the in-process limit for the same windows (``bench.offline --resize tiles``);
2. peak RSS growth for one 4000x3000 tiled request <= 64 MiB over idle: the second such
   request to a fresh server (the first's growth, reported beside it, includes what stays set
   up for every later one: ONNX Runtime's memory arena for the window batches);
3. a lone 640x480 request to ``--model`` under its card's policy: p50 <= 2.5 x a lone request
   to ``--today`` (the model it replaces) under that one's;
plus, as a figure, ``--model`` under its card's policy (``native`` for the bundled default) at
concurrency 32 against its own in-process limit (``bench.offline`` at that policy).

Servers run as subprocesses on 127.0.0.1 and are stopped by PID; the load runs in its own
process (``bench.loadtest``, raw client).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.images import sample_jpeg
from bench.procstat import load_average
from bench.server import (
    DEFAULT_MODEL,
    LATEST_MODEL,
    ROOT,
    run_loadtest,
    run_offline,
    serve,
)
from bench.verdict import Verdict

RESULTS = ROOT / "bench" / "results" / "policies"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Measured:
    offline: dict  # bench.offline --resize tiles, large image
    served: dict  # bench.loadtest, tiles, large image, c=8
    rss_bytes: list[tuple[int, int]]  # (idle, peak) over the first and the second large request
    lone_default: dict  # bench.loadtest c=1, --model under its card's policy
    lone_today: dict  # the same, --today
    offline_own: dict  # bench.offline, --model under its card's policy, 640x480
    served_own: dict  # bench.loadtest c=32, the same


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=LATEST_MODEL)
    parser.add_argument("--today", type=Path, default=DEFAULT_MODEL, help="the model it replaces")
    parser.add_argument("--tile", type=int, help="tiles: window side (default: the card's)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> Measured:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tiles = ["resize=tiles", *([f"tile={args.tile}"] if args.tile else [])]
    offline = run_offline(
        args.model,
        out / "offline-tiles.json",
        [],
        "--image=large",
        "--batch-sizes=8",
        *(f"--{q}" for q in tiles),
    )
    # A tiled 4000x3000 request takes seconds: long enough a window for many to finish in it.
    load = ["--image=large", "--concurrency=8", "--client=raw", "--warmup=15"]
    load.append(f"--duration={max(args.duration, 40.0)}")
    with serve("segserve", args.model, out / "server-tiles.log") as server:
        served = run_loadtest(
            server.base_url, server.pid, out / "served-tiles.json", *load,
            *(f"--query={q}" for q in tiles),
        )  # fmt: skip
    rss = _one_request_peak(args.model, out, tiles)
    offline_own = run_offline(args.model, out / "offline-own.json", [], "--batch-sizes=1,4,8")
    level = [f"--duration={args.duration}", "--client=raw"]
    with serve("segserve", args.model, out / "server-lone.log") as server:
        lone_default = run_loadtest(
            server.base_url, server.pid, out / "lone-model.json", "--concurrency=1", *level
        )
        served_own = run_loadtest(
            server.base_url, server.pid, out / "served-own-c32.json", "--concurrency=32", *level
        )
    with serve("segserve", args.today, out / "server-today.log") as server:
        lone_today = run_loadtest(
            server.base_url, server.pid, out / "lone-today.json", "--concurrency=1", *level
        )
    return Measured(offline, served, rss, lone_default, lone_today, offline_own, served_own)


def _one_request_peak(model: Path, out: Path, tiles: list[str]) -> list[tuple[int, int]]:
    """(idle RSS, peak RSS) over each of two 4000x3000 tiled requests to a fresh server. The
    first also sets up what stays (ONNX Runtime's memory arena for the window batches, the
    allocator's free lists); the second shows what one large request holds."""
    params = dict(q.split("=", 1) for q in tiles)
    with serve("segserve", model, out / "server-rss.log") as server:
        status = Path(f"/proc/{server.pid}/status")
        marks = []
        for _ in range(2):
            idle = _status_kib(status, "VmRSS") * 1024
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # peak := current (Linux)
            httpx.post(
                f"{server.base_url}/segment",
                params=params,
                content=sample_jpeg("large"),
                headers={"Content-Type": "image/jpeg"},
                timeout=300,
            ).raise_for_status()
            marks.append((idle, _status_kib(status, "VmHWM") * 1024))
        return marks


def _status_kib(status: Path, field: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def judge(m: Measured) -> list[Verdict]:
    windows = m.offline["windows_per_image"]
    limit = m.offline["limit_images_per_s"] * windows
    served = m.served["throughput_rps"] * windows
    (idle0, peak0), (idle, peak) = m.rss_bytes
    growth = peak - idle
    p50, today_p50 = m.lone_default["latency_ms"]["p50"], m.lone_today["latency_ms"]["p50"]
    return [
        Verdict(
            "tiled windows/s, c=8, vs offline",
            f"{served:.0f} / {limit:.0f} = {served / limit:.2f} x ({windows} windows/image)",
            ">= 0.90 x",
            served >= 0.9 * limit,
        ),
        Verdict(
            "peak RSS growth, one 4000x3000 tiled request",
            f"{growth / MIB:.1f} MiB over {idle / MIB:.0f} MiB idle "
            f"(first: {(peak0 - idle0) / MIB:.1f} over {idle0 / MIB:.0f})",
            "<= 64 MiB",
            growth <= 64 * MIB,
        ),
        Verdict(
            "lone 640x480 p50, the model (its policy) vs the one it replaces",
            f"{p50:.2f} / {today_p50:.2f} ms = {p50 / today_p50:.2f} x",
            "<= 2.5 x",
            p50 <= 2.5 * today_p50,
        ),
    ]


def own_policy_line(m: Measured) -> str:
    """The model under its card's policy at c=32 against its in-process limit (a figure)."""
    limit, rate = m.offline_own["limit_images_per_s"], m.served_own["throughput_rps"]
    return (
        f"The model under its card's policy, 640x480 at c=32: {rate:.1f} req/s = "
        f"{rate / limit:.2f} x its in-process limit ({limit:.1f} img/s at batch "
        f"{m.offline_own['limit_batch_size']}), p50 {m.served_own['latency_ms']['p50']:.1f} ms."
    )


def render(m: Measured, verdicts: list[Verdict], out: Path) -> None:
    table = "\n".join(
        ["| target | measured | bound | verdict |", "|---|---|---|---|"]
        + [v.row() for v in verdicts]
    )
    table += "\n\n" + own_policy_line(m)
    print(table)
    (out / "policies.md").write_text(table + "\n")
    (out / "policies.json").write_text(
        json.dumps(
            {
                "load_average": str(load_average()),
                "measured": m.__dict__,
                "verdicts": [v.__dict__ for v in verdicts],
            },
            indent=2,
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    measured = measure(args)
    render(measured, judge(measured), args.out)


if __name__ == "__main__":
    main()
