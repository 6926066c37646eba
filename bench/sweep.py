"""Latency against throughput over a range of concurrencies, for segserve and the naive baseline.

    python -m bench.sweep                      # default model, both servers, PNG + table
    python -m bench.sweep --servers segserve --concurrency 1,8,32 --duration 5

Each server runs as its own subprocess on 127.0.0.1; each load level runs ``bench.loadtest`` in a
separate process too, so neither this script nor the previous level competes for the 2 cores.
The offline limit (``bench.offline``, same thread budget) is drawn as a vertical line: it is the
throughput the server would reach if HTTP, batching and scheduling cost nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.loadtest import LoadResult
from bench.procstat import load_average
from bench.server import (
    DEFAULT_MODEL,
    MULTIPART_ONLY,
    ROOT,
    add_settings_option,
    run_loadtest,
    run_offline,
    serve,
    settings_dict,
)

RESULTS = ROOT / "bench" / "results"
DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32, 64)
# segserve with another process layout, the same threads in total as the default one.
SEGSERVE_LAYOUTS = {
    "segserve-2p": {
        "SEGSERVE_PROCESSES": "2",
        "SEGSERVE_WORKER_THREADS": "1",
        "SEGSERVE_INTRA_OP_THREADS": "1",
    },
}
COLOURS = ("tab:blue", "tab:cyan", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def run_level(
    kind: str, base_url: str, pid: int, concurrency: int, args: argparse.Namespace, out: Path
) -> dict:
    return run_loadtest(
        base_url,
        pid,
        out,
        "--image",
        args.image,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--client",
        args.client,
        *(["--multipart"] if kind in MULTIPART_ONLY else []),
    )


def plot(results: dict[str, list[dict]], limit: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for (name, rows), colour in zip(results.items(), COLOURS, strict=False):
        x = [r["throughput_rps"] for r in rows]
        ax.plot(x, [r["latency_ms"]["p50"] for r in rows], "o-", color=colour, label=f"{name} p50")
        ax.plot(
            x,
            [r["latency_ms"]["p99"] for r in rows],
            "s--",
            color=colour,
            alpha=0.6,
            label=f"{name} p99",
        )
        for r, xi in zip(rows, x, strict=True):
            ax.annotate(
                f"c{r['concurrency']}",
                (xi, r["latency_ms"]["p50"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
                color=colour,
            )
    if limit:
        ax.axvline(limit, color="black", linestyle=":", label=f"offline limit {limit:.0f} img/s")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside the curves
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument(
        "--servers",
        default="segserve,naive",
        help="comma-separated: segserve, segserve-2p (2 processes, same threads in total), naive, "
        "litserve, bentoml, rayserve (own venvs)",
    )
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_LEVELS)))
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--image", default="small")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load client (raw: ~0.1 ms CPU per request, httpx: ~0.9 ms)",
    )
    add_settings_option(parser, help="segserve setting for this sweep")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FLAG",
        help="run segserve through bench.variant with this flag (repeatable)",
    )
    parser.add_argument("--offline-json", type=Path, help="reuse a bench.offline result")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "images" / "perf-sweep.png")
    args = parser.parse_args(argv)

    settings = settings_dict(args.settings)
    levels = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {load_average()}", flush=True)
    offline = (
        json.loads(args.offline_json.read_text())
        if args.offline_json
        else run_offline(args.model, args.out / "offline.json", args.settings)
    )
    limit = offline.get("limit_images_per_s")

    results: dict[str, list[dict]] = {}
    for kind in args.servers.split(","):
        rows = []
        server_kind, layout = (
            ("segserve", SEGSERVE_LAYOUTS[kind]) if kind in SEGSERVE_LAYOUTS else (kind, {})
        )
        with serve(
            server_kind, args.model, tmp / f"{kind}.log", settings | layout, variant=args.variant
        ) as server:
            for c in levels:
                out = tmp / f"{kind}-c{c}.json"
                row = run_level(kind, server.base_url, server.pid, c, args, out)
                rows.append(row)
                print(LoadResult(**row).markdown_row(kind), flush=True)
        results[kind] = rows

    (args.out / "sweep.json").write_text(
        json.dumps(
            {
                "model": str(args.model),
                "settings": settings,
                "variant": args.variant,
                "client": args.client,
                "offline": offline,
                "load_average_after": str(load_average()),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    table = [LoadResult.markdown_header()]
    table += [LoadResult(**r).markdown_row(kind) for kind, rows in results.items() for r in rows]
    (args.out / "sweep.md").write_text("\n".join(table) + "\n")
    title = f"{args.model.parent.parent.name}, {args.image} JPEG, 2-core CPU"
    plot(results, limit, args.png, title)
    print("\n".join(table))
    print(f"wrote {args.out / 'sweep.json'}, {args.png}")


if __name__ == "__main__":
    main()
