"""Server-level levers over HTTP: the same load against segserve configurations, side by side.

    python -m bench.compare                          # the lever set below, default model
    python -m bench.compare --only default,no-batching --duration 8

Each configuration is a fresh server (settings and/or a ``bench.variant`` flag) measured at
concurrency 1 (latency) and 32 (throughput) with the raw client; ``--rounds 2`` alternates the
configurations twice so a burst of load from elsewhere cannot favour one of them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.images import sample_jpeg
from bench.loadtest import LoadSpec, run
from bench.procstat import load_average
from bench.server import DEFAULT_MODEL, ROOT, serve

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Config:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    variant: list[str] = field(default_factory=list)

    @property
    def what(self) -> str:
        changes = [f"{k.removeprefix('SEGSERVE_')}={v}" for k, v in self.settings.items()]
        return " ".join(changes + self.variant) or "as shipped"


LEVERS = (
    Config("default"),
    Config("batch-eager-off", {"SEGSERVE_BATCH_EAGER": "false"}),  # always wait out the delay
    Config("batch-delay-0", {"SEGSERVE_MAX_BATCH_DELAY_MS": "0"}),
    Config("no-batching", {"SEGSERVE_MAX_BATCH_SIZE": "1"}),
    Config("batch-16", {"SEGSERVE_MAX_BATCH_SIZE": "16"}),  # a burst in fewer batches
    Config("intra-op-1", {"SEGSERVE_INTRA_OP_THREADS": "1"}),
    Config("intra-op-2", {"SEGSERVE_INTRA_OP_THREADS": "2"}),
    Config("spinning-on", {"SEGSERVE_INTRA_OP_SPINNING": "true"}),  # ORT's own default
    Config("workers-1", {"SEGSERVE_WORKER_THREADS": "1"}),
    Config("workers-4", {"SEGSERVE_WORKER_THREADS": "4"}),
    Config("asyncio-h11", variant=["--loop", "asyncio", "--http", "h11"]),
    Config("log-warning", {"SEGSERVE_LOG_LEVEL": "warning"}),  # no per-request access log
)


def measure(config: Config, model: Path, duration: float, levels: tuple[int, ...]) -> dict:
    body = sample_jpeg("small")
    row: dict = {"name": config.name, "what": config.what, "load_before": str(load_average())}
    log = RESULTS / "tmp" / f"compare-{config.name}.log"
    with serve("segserve", model, log, config.settings, variant=config.variant) as server:
        for c in levels:
            result = run(
                LoadSpec(
                    base_url=server.base_url,
                    body=body,
                    concurrency=c,
                    duration_s=duration,
                    warmup_s=2.0,
                    server_pid=server.pid,
                    client="raw",
                    progress=False,
                )
            )
            row[f"c{c}"] = {
                "rps": result.throughput_rps,
                "p50": result.latency_ms["p50"],
                "p99": result.latency_ms["p99"],
                "statuses": result.status_counts,
                "server_cpu_ms": result.server_cpu_ms_per_request,
                "failures": result.check_failures,
            }
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | c=1 p50 ms | c=1 req/s | c=32 req/s | c=32 p50 ms | c=32 p99 ms "
        "| server CPU ms/req (c=32) | load avg before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c1, c32 = r["c1"], r["c32"]
        lines.append(
            f"| {r['name']} ({r['what']}) | {c1['p50']:.2f} | {c1['rps']:.1f} "
            f"| {c32['rps']:.1f} | {c32['p50']:.1f} | {c32['p99']:.1f} "
            f"| {c32['server_cpu_ms']:.2f} | {r['load_before']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "compare")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    configs = [c for c in LEVERS if wanted is None or c.name in wanted]
    rows = []
    for round_ in range(args.rounds):
        for config in configs:
            row = measure(config, args.model, args.duration, (1, 32)) | {"round": round_}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(
        json.dumps({"model": str(args.model), "rows": rows}, indent=2) + "\n"
    )
    (args.out / "compare.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
