"""The performance targets of docs/PERFORMANCE.md, measured in one run and judged.

    python -m bench.targets                          # default model, ~4 minutes on 2 cores
    python -m bench.targets --model models/x/1/model.onnx --memory-requests 2000

1. throughput at concurrency 32 >= 0.90 x the offline limit (``bench.offline``, same threads);
2. like-for-like: the offline CPU per image >= 0.90 x the served CPU per request at c=32, the
   offline run in the servers' own layout (``--server-set``: their settings, and ``--processes``
   as many as SEGSERVE_PROCESSES) at their batch size; its throughput ratio is shown beside it;
3. p50 latency at concurrency 1 <= 1.25 x the single-image latency of that offline run (its
   stage times' best at batch 1, summed); beside it, as a figure, the same p50 against the
   offline run's own p50 of one image at a time, which leaves out the stages' spread and so
   shows what HTTP adds;
4. server RSS after 10,000 requests within 10% of RSS after the first 1,000 (fresh server);
plus, as figures: open-loop (Poisson) latency at 50, 70 and 90 % of the c=32 throughput, for
capacity plans; the Open Inference Protocol's infer (a BYTES JPEG in, the png out, binary over
REST) at c=32 against the same offline limit (it runs the same pipeline, so that is its
in-process limit); and a 4000x3000 JPEG's p50 at c=1 against the 640x480 one's.

Each load level runs ``bench.loadtest`` in its own process (its CPU use is reported), with the
raw HTTP/1.1 client by default (httpx costs ~0.9 ms CPU per request, ~10% of 2 cores at c=32:
the c=32 level is repeated with httpx so the difference is on record);
servers run as subprocesses on 127.0.0.1 and are stopped by PID.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from bench import sections
from bench.procstat import load_average
from bench.server import (
    DEFAULT_MODEL,
    ROOT,
    add_settings_option,
    run_loadtest,
    run_offline,
    serve,
    served_as,
    settings_dict,
)
from bench.verdict import Verdict
from service.settings import Settings

RESULTS = ROOT / "bench" / "results"
SERVER_LOGS = RESULTS / "tmp"
OPEN_LOOP_SHARES = (0.5, 0.7, 0.9)  # of the closed-loop c=32 throughput


@dataclass(frozen=True)
class Measured:
    """Every result of one run: the offline limits, each load level's JSON, and the conditions."""

    offline: dict
    offline_layout: dict  # the same pipeline in the servers' layout: the like-for-like reference
    offline_large: dict
    runs: dict[str, dict]
    rss_every: int  # the memory run records RSS after this many requests, and after 10 times it
    load_before: str
    load_after: str


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    add_settings_option(parser, help="segserve setting for every step")
    add_settings_option(
        parser,
        "--server-set",
        "server_settings",
        help="setting for the server only, e.g. a process layout with the offline run's threads "
        "in total (SEGSERVE_PROCESSES=2, SEGSERVE_WORKER_THREADS=1, SEGSERVE_INTRA_OP_THREADS=1)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load client for the targets; c=32 is also run with httpx",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="also judge graceful overload, the input policies, the pipeline's CPU against "
        "--base and the decode floor (bench.sections; about 15 minutes in all)",
    )
    parser.add_argument(
        "--base", type=Path, help="a source tree of the code before (e.g. a git worktree)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "targets")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, settings: dict[str, str]) -> Measured:
    """The offline runs, then the load levels on one server, then the memory run on a fresh one."""
    out = args.out
    load_before = str(load_average())
    offline = run_offline(args.model, out / "offline-small.json", args.settings)
    offline_large = run_offline(
        args.model,
        out / "offline-large.json",
        args.settings,
        "--image",
        "large",
        "--batch-sizes",
        "1",
    )
    offline_layout = _run_offline_layout(args, offline)
    runs = _run_levels(args, settings)
    every = max(1, args.memory_requests // 10)
    runs["memory"] = _run_memory(args, settings, every)
    return Measured(
        offline, offline_layout, offline_large, runs, every, load_before, str(load_average())
    )


def _run_offline_layout(args: argparse.Namespace, offline: dict) -> dict:
    """``bench.offline`` with the servers' settings and as many processes as they run; the run
    ``offline`` itself when the servers add no setting of their own."""
    if not args.server_settings:
        return offline
    settings = [*args.settings, *args.server_settings]
    processes = settings_dict(settings).get("SEGSERVE_PROCESSES", "1")
    return run_offline(
        args.model, args.out / "offline-small-layout.json", settings, "--processes", processes
    )


def _run_levels(args: argparse.Namespace, settings: dict[str, str]) -> dict[str, dict]:
    """Closed loop at c=1 and c=32, then open loop at shares of the c=32 throughput."""
    out = args.out
    runs: dict[str, dict] = {}
    duration = ["--duration", str(args.duration), "--warmup", "3", "--client", args.client]
    with serve("segserve", args.model, SERVER_LOGS / "targets-segserve.log", settings) as server:
        for name, extra in (
            ("c1-small", ["--concurrency", "1"]),
            ("c1-large", ["--concurrency", "1", "--image", "large"]),
            ("c32-small", ["--concurrency", "32"]),
            ("c32-small-httpx", ["--concurrency", "32", "--client", "httpx"]),
            ("c32-oip", ["--concurrency", "32", "--oip-model", served_as(args.model)[0]]),
        ):
            runs[name] = run_loadtest(
                server.base_url, server.pid, out / f"{name}.json", *duration, *extra
            )
            print(
                f"{name}: {runs[name]['throughput_rps']:.1f} req/s, "
                f"p50 {runs[name]['latency_ms']['p50']:.2f} ms",
                flush=True,
            )
        # Open loop (Poisson arrivals) below saturation: the latency a capacity plan can promise.
        for share in OPEN_LOOP_SHARES:
            rate = round(share * runs["c32-small"]["throughput_rps"], 1)
            runs[f"open-{share:.0%}"] = run_loadtest(
                server.base_url,
                server.pid,
                out / f"open-{share:.0%}.json",
                *duration,
                "--rate",
                str(rate),
            )
    return runs


def _run_memory(args: argparse.Namespace, settings: dict[str, str], every: int) -> dict:
    """``args.memory_requests`` requests on a fresh server, its RSS recorded every ``every``."""
    with serve("segserve", args.model, SERVER_LOGS / "targets-memory.log", settings) as server:
        return run_loadtest(
            server.base_url,
            server.pid,
            args.out / "memory.json",
            "--concurrency",
            "8",
            "--client",
            args.client,
            "--requests",
            str(args.memory_requests),
            "--duration",
            "900",
            "--warmup",
            "0",
            "--rss-every",
            str(every),
        )


def like_for_like(c32: dict, c1: dict, offline: dict, batch_size: int) -> dict[str, float]:
    """The load levels ``c32`` and ``c1`` against ``offline``, the same pipeline in-process in
    the same layout: its CPU per image at ``batch_size`` (the servers' largest batch; the best
    batch when the run has no such size) against the CPU per request served at c=32, the c=32
    throughput against its limit, and the c=1 p50 against its single-image latency (the stage
    sum) and against its p50 of one image at a time."""
    batches = offline["batches"]
    best = max(batches, key=lambda b: b["images_per_s"])
    same = next((b for b in batches if b["batch_size"] == batch_size), best)
    return {
        "offline_cpu_ms_per_image": same["cpu_ms_per_image"],
        "offline_batch_size": same["batch_size"],
        "server_cpu_ms_per_request": c32["server_cpu_ms_per_request"],
        "cpu_ratio": same["cpu_ms_per_image"] / c32["server_cpu_ms_per_request"],
        "throughput_ratio": c32["throughput_rps"] / offline["limit_images_per_s"],
        "c1_p50_ms": c1["latency_ms"]["p50"],
        "single_image_ms": offline["single_image_ms"],
        "c1_ratio": c1["latency_ms"]["p50"] / offline["single_image_ms"],
        "single_image_p50_ms": offline["single_image_p50_ms"],
        "c1_ratio_to_lone_p50": c1["latency_ms"]["p50"] / offline["single_image_p50_ms"],
    }


def judge(m: Measured, batch_size: int) -> list[Verdict]:
    """The targets of docs/PERFORMANCE.md, in its order, each against its bound; ``batch_size``:
    the servers' largest batch (SEGSERVE_MAX_BATCH_SIZE)."""
    limit = m.offline["limit_images_per_s"]
    c32, c1 = m.runs["c32-small"], m.runs["c1-small"]
    same = like_for_like(c32, c1, m.offline_layout, batch_size)
    processes = m.offline_layout.get("processes", 1)
    rss = m.runs["memory"]["server_rss_mb"]
    rss_first, rss_last = rss[str(m.rss_every)], rss[str(m.rss_every * 10)]
    return [
        Verdict(
            "throughput at c=32 vs offline limit",
            f"{c32['throughput_rps']:.1f} req/s = {c32['throughput_rps'] / limit:.3f} x "
            f"{limit:.1f} img/s",
            ">= 0.90 x",
            c32["throughput_rps"] >= 0.9 * limit,
        ),
        Verdict(
            f"like-for-like: CPU per image offline ({processes} "
            f"process{'es' if processes > 1 else ''}, batch {same['offline_batch_size']}) vs "
            "per request served at c=32",
            f"{same['offline_cpu_ms_per_image']:.2f} / {same['server_cpu_ms_per_request']:.2f} ms"
            f" = {same['cpu_ratio']:.3f} x (throughput {c32['throughput_rps']:.1f} / "
            f"{m.offline_layout['limit_images_per_s']:.1f} img/s = "
            f"{same['throughput_ratio']:.3f} x)",
            ">= 0.90 x",
            same["cpu_ratio"] >= 0.9,
        ),
        Verdict(
            "p50 latency at c=1 vs offline single image (same layout)",
            f"{same['c1_p50_ms']:.2f} ms vs {same['single_image_ms']:.2f} ms "
            f"= {same['c1_ratio']:.2f} x (vs the in-process p50 of one image at a time, "
            f"{same['single_image_p50_ms']:.2f} ms: {same['c1_ratio_to_lone_p50']:.2f} x)",
            "<= 1.25 x",
            same["c1_ratio"] <= 1.25,
        ),
        Verdict(
            f"RSS after {m.rss_every * 10} vs after {m.rss_every} requests",
            f"{rss_last:.1f} / {rss_first:.1f} MiB = {rss_last / rss_first:.3f}",
            "within 10 %",
            abs(rss_last / rss_first - 1) <= 0.10,
        ),
    ]


def cpu_split(m: Measured) -> dict[str, float]:
    """Where the gap to the offline limit goes: CPU per image in-process vs per request served."""
    c32 = m.runs["c32-small"]
    return {
        "offline_cpu_ms_per_image": _best_batch(m)["cpu_ms_per_image"],
        "server_cpu_ms_per_request_c32": c32["server_cpu_ms_per_request"],
        "client_cpu_cores_c32": c32["client_cpu_cores"],
        "client_cpu_cores_c32_httpx": m.runs["c32-small-httpx"]["client_cpu_cores"],
    }


def _oip_line(c32_oip: dict, limit: float) -> str:
    """The Open Inference Protocol's infer against its in-process limit: the same pipeline's."""
    served = c32_oip["throughput_rps"]
    return (
        f"Open Inference Protocol infer (a BYTES JPEG in, the png out, binary REST) at c=32: "
        f"{served:.1f} req/s = {served / limit:.3f} x its in-process limit ({limit:.1f} img/s: "
        f"the same pipeline), p50 {c32_oip['latency_ms']['p50']:.1f} ms."
    )


def _large_line(c1_large: dict, c1: dict) -> str:
    """The 4000x3000 request against the 640x480 one: a figure, no longer a target (its floor is
    the JPEG's entropy decoding: ``bench.sections.decode_floor_lines``, with ``--all``)."""
    large, small = c1_large["latency_ms"]["p50"], c1["latency_ms"]["p50"]
    return (
        f"A 4000x3000 JPEG at c=1: p50 {large:.2f} ms = {large / small:.1f} x the 640x480 one "
        f"({small:.2f} ms)."
    )


def _best_batch(m: Measured) -> dict:
    return max(m.offline["batches"], key=lambda b: b["images_per_s"])


def render(m: Measured, verdicts: list[Verdict], cpu: dict[str, float]) -> list[str]:
    """The Markdown of targets.md: the verdicts, the CPU split and the open-loop latencies."""
    table = [
        "| target | measured | bound | verdict |",
        "|---|---|---|---|",
        *(v.row() for v in verdicts),
        "",
        f"CPU per image: {cpu['offline_cpu_ms_per_image']:.2f} ms offline (batch "
        f"{_best_batch(m)['batch_size']}), {cpu['server_cpu_ms_per_request_c32']:.2f} ms per "
        f"request served at c=32; load client "
        f"{cpu['client_cpu_cores_c32']:.2f} cores (raw), "
        f"{cpu['client_cpu_cores_c32_httpx']:.2f} (httpx: "
        f"{m.runs['c32-small-httpx']['throughput_rps']:.1f} req/s).",
        "",
        _oip_line(m.runs["c32-oip"], m.offline["limit_images_per_s"]),
        "",
        _large_line(m.runs["c1-large"], m.runs["c1-small"]),
        "",
        "| open loop (Poisson) | req/s offered | served | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for share in OPEN_LOOP_SHARES:
        r = m.runs[f"open-{share:.0%}"]
        table.append(
            f"| {share:.0%} of c=32 throughput | {r['rate']:g} | "
            f"{r['throughput_rps']:.1f} | {r['latency_ms']['p50']:.1f} | "
            f"{r['latency_ms']['p99']:.1f} |"
        )
    return table


def _sections(args: argparse.Namespace, c1_large_p50_ms: float) -> tuple[list[Verdict], list[str]]:
    """The other sections' verdicts and notes (bench.sections), each run after the last."""
    verdicts, notes = [], []
    for section_verdicts, section_notes in (
        sections.overload_section(args.model, args.out / "overload", args.duration),
        sections.policies_section(args.out / "policies", args.duration),
        sections.pipeline_section(args.model, args.base, args.out / "pipeline"),
        ([], sections.decode_floor_lines(c1_large_p50_ms)),
    ):
        verdicts += section_verdicts
        notes += section_notes
    return verdicts, notes


def largest_batch(settings: dict[str, str]) -> int:
    """The servers' largest batch (``settings``: every SEGSERVE_ setting they run with)."""
    default = Settings.model_fields["max_batch_size"].default
    return int(settings.get("SEGSERVE_MAX_BATCH_SIZE", default))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = settings_dict([*args.settings, *args.server_settings])
    measured = measure(args, settings)
    verdicts = judge(measured, largest_batch(settings))
    cpu = cpu_split(measured)
    table = render(measured, verdicts, cpu)
    if args.all:
        more, notes = _sections(args, measured.runs["c1-large"]["latency_ms"]["p50"])
        rows_end = 2 + len(verdicts)  # after the header, separator and this run's own rows
        table[rows_end:rows_end] = [v.row() for v in more]
        verdicts += more
        table += ["", *notes]
    summary = {
        "model": str(args.model),
        "settings": settings,
        "load_before": measured.load_before,
        "load_after": measured.load_after,
        "offline": measured.offline,
        "offline_layout": measured.offline_layout,
        "offline_large": measured.offline_large,
        "runs": measured.runs,
        "cpu": cpu,
        "verdicts": [v.__dict__ for v in verdicts],
    }
    (args.out / "targets.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "targets.md").write_text("\n".join(table) + "\n")
    print(f"load average before {measured.load_before}, after {measured.load_after}")
    print("\n".join(table))


if __name__ == "__main__":
    main()
