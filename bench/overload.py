"""Graceful overload (docs/PERFORMANCE.md): open-loop load at 50 to 200 % of capacity, judged.

    python -m bench.overload                              # ~3 minutes on 2 cores
    python -m bench.overload --server-set SEGSERVE_MAX_QUEUE_WAIT_MS=0   # admission off
    python -m bench.overload --server-set SEGSERVE_PROCESSES=2   # another layout, same budget

Capacity is the c=32 closed-loop throughput (and the lone request's p50, at c=1) of a server
with the same settings but no admission budget: 32 clients that send again the moment they are
refused measure a retry storm, not the server. Then, on a server with the budget, Poisson
arrivals at each share of it, each level in its own ``bench.loadtest`` process (raw client),
and the targets:

- at 80 %: everything offered is served (within 2 %), p99 <= 10 x the c=1 p50;
- at 150 % and 200 %: goodput (200s per second) >= 90 % of capacity, the accepted requests' p99
  <= 2 x their p99 at 80 %, the refusals' p99 <= 5 ms.

Writes the table (markdown and JSON) and ``overload.png``: latency and goodput against offered
load.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import load_average
from bench.server import (
    DEFAULT_MODEL,
    ROOT,
    RunningServer,
    add_settings_option,
    run_loadtest,
    serve,
    settings_dict,
)
from bench.verdict import Verdict

RESULTS = ROOT / "bench" / "results" / "overload"
SHARES = (0.5, 0.8, 1.0, 1.5, 2.0)
DEFAULT_SERVER = {"SEGSERVE_MAX_QUEUE_WAIT_MS": "100"}  # --server-set adds to it or overrides it


@dataclass(frozen=True)
class Level:
    share: float
    offered_rps: float  # the nominal rate: the mean of the Poisson arrivals
    sent: int  # requests the client actually sent in the measured window
    served: int  # of them, answered 200
    goodput_rps: float
    refused_rps: float
    ok_p50_ms: float
    ok_p99_ms: float
    refusal_p99_ms: float | None


@dataclass(frozen=True)
class Measured:
    capacity_rps: float
    lone_p50_ms: float
    levels: list[Level]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    add_settings_option(
        parser,
        "--server-set",
        "server_settings",
        help="a server setting, over the default 100 ms budget (which SEGSERVE_MAX_QUEUE_WAIT_MS "
        "replaces)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FLAG",
        help="serve through bench.variant with this flag (repeat for each)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def server_settings(args: argparse.Namespace) -> dict[str, str]:
    """The guarded server's settings: the default budget with ``--server-set`` over it, so a
    layout given there (SEGSERVE_PROCESSES=2) is still measured with admission on."""
    return DEFAULT_SERVER | settings_dict(args.server_settings)


def measure(args: argparse.Namespace) -> Measured:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = server_settings(args)
    run = ["--client=raw", f"--duration={args.duration}"]
    variant = args.variant or None

    def level(server: RunningServer, name: str, *extra: str) -> dict:
        return run_loadtest(server.base_url, server.pid, out / f"{name}.json", *run, *extra)

    unguarded = settings | {"SEGSERVE_MAX_QUEUE_WAIT_MS": "0"}
    with serve(
        "segserve", args.model, out / "server-capacity.log", unguarded, variant=variant
    ) as server:
        capacity = level(server, "closed-c32", "--concurrency=32")["throughput_rps"]
        lone = level(server, "closed-c1", "--concurrency=1")["latency_ms"]["p50"]
    with serve("segserve", args.model, out / "server.log", settings, variant=variant) as server:
        levels = [
            _level(
                share, capacity, level(server, f"open-{share:g}", f"--rate={share * capacity:.1f}")
            )
            for share in SHARES
        ]
    return Measured(capacity, lone, levels)


def _level(share: float, capacity: float, result: dict) -> Level:
    wall = result["wall_s"]
    by_status = result["latency_by_status_ms"]
    refused = result["status_counts"].get("503", 0)
    return Level(
        share=share,
        offered_rps=share * capacity,
        sent=result["requests"],
        served=result["status_counts"].get("200", 0),
        goodput_rps=result["throughput_rps"],
        refused_rps=refused / wall if wall else 0.0,
        ok_p50_ms=by_status.get("200", {}).get("p50", float("nan")),
        ok_p99_ms=by_status.get("200", {}).get("p99", float("nan")),
        refusal_p99_ms=by_status["503"]["p99"] if refused else None,
    )


def judge(m: Measured) -> list[Verdict]:
    by_share = {level.share: level for level in m.levels}
    at80 = by_share[0.8]
    verdicts = [
        # Judged on the requests sent, not the nominal rate: in 8 s at ~400 req/s the Poisson
        # count alone differs from the mean by 1.7 % (one standard deviation).
        Verdict(
            "80 %: offered load served",
            f"{at80.served} of {at80.sent} requests ({at80.goodput_rps:.1f} req/s, "
            f"{at80.offered_rps:.1f} nominal)",
            "within 2 %",
            at80.served >= 0.98 * at80.sent,
        ),
        Verdict(
            "80 %: p99 vs c=1 p50",
            f"{at80.ok_p99_ms:.1f} ms vs {m.lone_p50_ms:.2f} ms",
            "<= 10 x",
            at80.ok_p99_ms <= 10 * m.lone_p50_ms,
        ),
    ]
    for share in (1.5, 2.0):
        level = by_share[share]
        refusal = level.refusal_p99_ms
        verdicts += [
            Verdict(
                f"{share:.0%}: goodput vs capacity",
                f"{level.goodput_rps:.1f} / {m.capacity_rps:.1f} req/s",
                ">= 0.90 x",
                level.goodput_rps >= 0.9 * m.capacity_rps,
            ),
            Verdict(
                f"{share:.0%}: accepted p99 vs 80 %",
                f"{level.ok_p99_ms:.1f} vs {at80.ok_p99_ms:.1f} ms",
                "<= 2 x",
                level.ok_p99_ms <= 2 * at80.ok_p99_ms,
            ),
            Verdict(
                f"{share:.0%}: refusals' p99",
                "no refusals" if refusal is None else f"{refusal:.2f} ms",
                "<= 5 ms",
                refusal is None or refusal <= 5,
            ),
        ]
    return verdicts


def render(m: Measured, verdicts: list[Verdict], out: Path) -> None:
    rows = [
        "| offered | req/s offered | goodput | refused/s | p50 ms (200) | p99 ms (200) "
        "| p99 ms (503) |",
        "|---|---|---|---|---|---|---|",
    ] + [
        f"| {v.share:.0%} | {v.offered_rps:.1f} | {v.goodput_rps:.1f} | {v.refused_rps:.1f} "
        f"| {v.ok_p50_ms:.1f} | {v.ok_p99_ms:.1f} "
        f"| {'-' if v.refusal_p99_ms is None else f'{v.refusal_p99_ms:.2f}'} |"
        for v in m.levels
    ]
    head = f"capacity (c=32): {m.capacity_rps:.1f} req/s; c=1 p50 {m.lone_p50_ms:.2f} ms\n"
    verdict_table = ["| target | measured | bound | verdict |", "|---|---|---|---|"]
    text = head + "\n".join(rows) + "\n\n" + "\n".join(verdict_table + [v.row() for v in verdicts])
    print(text)
    (out / "overload.md").write_text(text + "\n")
    summary = {"load_average": str(load_average()), "measured": _as_dict(m)}
    (out / "overload.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(m, out / "overload.png")


def _as_dict(m: Measured) -> dict:
    return {
        "capacity_rps": m.capacity_rps,
        "lone_p50_ms": m.lone_p50_ms,
        "levels": [level.__dict__ for level in m.levels],
    }


def _plot(m: Measured, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [level.offered_rps for level in m.levels]
    fig, (rates, latency) = plt.subplots(1, 2, figsize=(10, 4))
    rates.plot(offered, offered, "k:", label="offered")
    rates.plot(offered, [v.goodput_rps for v in m.levels], "o-", label="served (200)")
    rates.plot(offered, [v.refused_rps for v in m.levels], "s-", label="refused (503)")
    rates.axhline(m.capacity_rps, color="grey", lw=0.8, label="capacity (c=32)")
    rates.set(xlabel="offered req/s", ylabel="req/s", title="goodput")
    rates.legend()
    latency.plot(offered, [v.ok_p50_ms for v in m.levels], "o-", label="p50 (200)")
    latency.plot(offered, [v.ok_p99_ms for v in m.levels], "o-", label="p99 (200)")
    refusals = [(o, v.refusal_p99_ms) for o, v in zip(offered, m.levels, strict=True)]
    shown = [(o, r) for o, r in refusals if r is not None]
    if shown:
        latency.plot(*zip(*shown, strict=True), "s-", label="p99 (503)")
    latency.set(xlabel="offered req/s", ylabel="ms", yscale="log", title="latency")
    latency.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    measured = measure(args)
    render(measured, judge(measured), args.out)


if __name__ == "__main__":
    main()
