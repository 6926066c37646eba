"""Server-level A/B of two source trees: fresh servers from each, alternated, under the same load.

    git worktree add /tmp/segserve-a <commit>          # tree A; B is this checkout
    python -m bench.ab --base /tmp/segserve-a --rounds 2 --out bench/results/ab

Each round measures tree A (``--base``) and tree B (this checkout), each first in turn: a
fresh ``python -m service`` from that tree with the same settings (default: the CPU pod's layout,
2 processes x 1 worker x 1 ONNX Runtime thread), the c=32 and c=1 closed loops with the raw
client (``bench.loadtest`` in its own process), and the CPU of the servers' event-loop threads
read from /proc around each level. Each round first runs ``bench.offline`` of this checkout with
the same settings and ``--processes`` (the pipeline both trees serve, without HTTP), which gives
both trees the like-for-like figures of ``bench.targets``: the offline CPU per image against the
served CPU per request at c=32, the c=32 throughput against the offline limit, and the c=1 p50
against the offline single-image latency. Alternating spreads a burst of load from elsewhere
over both trees.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.server import (
    DEFAULT_MODEL,
    ROOT,
    add_settings_option,
    run_loadtest,
    run_offline,
    serve,
    settings_dict,
)
from bench.targets import largest_batch, like_for_like

CPU_POD = (
    "SEGSERVE_PROCESSES=2",
    "SEGSERVE_WORKER_THREADS=1",
    "SEGSERVE_INTRA_OP_THREADS=1",
)
LEVELS = (32, 1)


@dataclass(frozen=True)
class Level:
    """One load level on one server: its ``bench.loadtest`` result and the event loops' CPU."""

    result: dict
    loop_cpu_s: float  # the servers' main threads over the whole run, warm-up included
    server_cpu_s: float  # every thread of the server tree over the same span

    @property
    def loop_ms_per_request(self) -> float:
        """The measured window's server CPU per request, times the event loops' share of it."""
        share = self.loop_cpu_s / self.server_cpu_s if self.server_cpu_s else 0.0
        return share * self.result["server_cpu_ms_per_request"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="tree A: another checkout")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each level")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="of bench.offline")
    add_settings_option(parser, help=f"setting for both trees; default: {' '.join(CPU_POD)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ab")
    return parser.parse_args(argv)


def measure_tree(args: argparse.Namespace, tree: Path, tag: str, settings: list[str]) -> dict:
    """A fresh server from ``tree``: each load level, then stopped."""
    log = ROOT / "bench" / "results" / "tmp" / f"ab-{tag}.log"
    levels: dict[str, Any] = {"load_before": str(procstat.load_average())}
    with serve("segserve", args.model, log, settings_dict(settings), root=tree) as server:
        for concurrency in LEVELS:
            level = _level(
                args,
                server.base_url,
                server.pid,
                args.out / f"{tag}-c{concurrency}.json",
                concurrency,
            )
            levels[f"c{concurrency}"] = level.result | {
                "loop_cpu_ms_per_request": level.loop_ms_per_request
            }
    return levels


def _level(args: argparse.Namespace, url: str, pid: int, out: Path, concurrency: int) -> Level:
    loop0, cpu0 = procstat.main_thread_cpu_seconds(pid), procstat.cpu_seconds(pid)
    result = run_loadtest(
        url,
        pid,
        out,
        "--client",
        "raw",
        "--concurrency",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
    )
    loop = procstat.main_thread_cpu_seconds(pid) - loop0
    return Level(result, loop, procstat.cpu_seconds(pid) - cpu0)


def ratios(tree: dict, offline: dict, batch_size: int) -> dict[str, float]:
    """``bench.targets``' like-for-like figures of one tree's run, and its event loops' CPU."""
    c32, c1 = tree["c32"], tree["c1"]
    return like_for_like(c32, c1, offline, batch_size) | {
        "loop_cpu_ms_per_request_c32": c32["loop_cpu_ms_per_request"],
        "loop_cpu_ms_per_request_c1": c1["loop_cpu_ms_per_request"],
        "rps_c32": c32["throughput_rps"],
    }


def run_rounds(args: argparse.Namespace) -> list[dict]:
    settings = args.settings or list(CPU_POD)
    processes = int(settings_dict(settings).get("SEGSERVE_PROCESSES", "1"))
    batch_size = largest_batch(settings_dict(settings))
    rows = []
    for round_ in range(args.rounds):
        offline = run_offline(
            args.model,
            args.out / f"offline-{round_}.json",
            settings,
            "--processes",
            str(processes),
            "--batch-sizes",
            args.batch_sizes,
        )
        trees = (("A", args.base.resolve()), ("B", ROOT))
        for tag, tree in trees if round_ % 2 == 0 else trees[::-1]:  # A B, B A, A B, ...
            run = measure_tree(args, tree, f"{tag}-{round_}", settings)
            row = {
                "tree": tag,
                "path": str(tree),
                "round": round_,
                "load_before": run["load_before"],
            }
            row |= {"load_after": run["c1"]["load_average"]} | ratios(run, offline, batch_size)
            print(_line(row), flush=True)
            rows.append(row)
    return rows


def _line(row: dict) -> str:
    return (
        f"| {row['tree']} | {row['round']} | {row['server_cpu_ms_per_request']:.3f} "
        f"| {row['loop_cpu_ms_per_request_c32']:.3f} | {row['offline_cpu_ms_per_image']:.3f} "
        f"| {row['cpu_ratio']:.3f} | {row['rps_c32']:.1f} | {row['throughput_ratio']:.3f} "
        f"| {row['c1_p50_ms']:.2f} | {row['single_image_ms']:.2f} | {row['c1_ratio']:.3f} "
        f"| {row['load_before']} |"
    )


def render(rows: list[dict]) -> str:
    head = (
        "| tree | round | server CPU ms/req c=32 | event loop ms/req c=32 | offline CPU ms/img "
        "| CPU ratio | req/s c=32 | throughput ratio | c=1 p50 ms | offline single ms "
        "| c=1 ratio | load before |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    medians = []
    for tree in ("A", "B"):
        mine = [r for r in rows if r["tree"] == tree]
        keys = (
            "server_cpu_ms_per_request",
            "loop_cpu_ms_per_request_c32",
            "cpu_ratio",
            "throughput_ratio",
            "c1_ratio",
        )
        medians.append(
            f"{tree} medians: "
            + ", ".join(f"{k} {statistics.median(r[k] for r in mine):.3f}" for k in keys)
        )
    return "\n".join([head, *(_line(r) for r in rows), "", *medians])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_rounds(args)
    table = render(rows)
    (args.out / "ab.json").write_text(
        json.dumps({"base": str(args.base), "model": str(args.model), "rows": rows}, indent=2)
        + "\n"
    )
    (args.out / "ab.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
