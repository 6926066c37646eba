"""segserve over the Open Inference Protocol beside its peers on the same protocol: KServe's
Python model server and Seldon MLServer (custom models: bench.baselines.kserve_server,
bench.baselines.mlserver_server), with the same ONNX model, the same image and the same load
client (``bench.loadtest --client raw``) at one concurrency, one server after the other in one
run; plus segserve's ``/segment`` at the same load, for the server CPU per request.

    python -m bench.oip_peers                       # c=32, 5 s measured per server
    python -m bench.oip_peers --servers segserve-oip,kserve --duration 3

Each server runs alone as a subprocess on 127.0.0.1 (peers in their own venvs:
docs/PERFORMANCE.md), measured by ``bench.loadtest`` in its own process. segserve gets binary
tensor data; KServe and MLServer get the image and give the PNG as base64 JSON, the one form
of a BYTES image both accept. Writes the raw JSON under bench/results/oip_peers/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from bench.loadtest import LoadResult
from bench.procstat import load_average
from bench.server import DEFAULT_MODEL, ROOT, run_loadtest, serve

RESULTS = ROOT / "bench" / "results" / "oip_peers"
# name -> (server kind, extra loadtest arguments given the model's name)
RUNS = {
    "segserve-oip": ("segserve", lambda m: ["--oip-model", m]),
    "segserve-segment": ("segserve", lambda m: []),
    "kserve": ("kserve", lambda m: ["--oip-model", m, "--oip-base64"]),
    "mlserver": ("mlserver", lambda m: ["--oip-model", m, "--oip-base64"]),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS)
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--image", default="small", help="bench.loadtest --image")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, stamp: str) -> dict[str, dict]:
    name = args.model.parent.parent.name
    results = {}
    for label in args.servers.split(","):
        kind, extra = RUNS[label]
        log = ROOT / "bench" / "results" / "tmp" / f"oip_peers-{stamp}-{label}.log"  # not kept
        with serve(kind, args.model, log) as server:
            results[label] = run_loadtest(
                server.base_url,
                server.pid,
                args.out / f"{stamp}-{label}.json",
                "--client", "raw",
                "--image", args.image,
                "--concurrency", str(args.concurrency),
                "--duration", str(args.duration),
                "--warmup", str(args.warmup),
                *extra(name),
            )  # fmt: skip
    return results


def render(results: dict[str, dict]) -> str:
    rows = ["| server | req/s | p50 ms | p99 ms | server CPU ms/request | 200 / requests |"]
    rows.append("|---|---|---|---|---|---|")
    for label, r in results.items():
        lat = r["latency_ms"]
        cpu = r.get("server_cpu_ms_per_request")
        rows.append(
            f"| {label} | {r['throughput_rps']:.1f} | {lat['p50']:.1f} | {lat['p99']:.1f} "
            f"| {'' if cpu is None else f'{cpu:.1f}'} | {r['ok']} / {r['requests']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    conditions = {
        "date_utc": stamp,
        "commit": commit,
        "load_average_before": str(load_average()),
        "model": str(args.model.relative_to(ROOT)),
        "image": args.image,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "client": "bench.loadtest --client raw",
    }
    results = run(args, stamp)
    conditions["load_average_after"] = str(load_average())
    summary = {"conditions": conditions, "results": results}
    (args.out / f"{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(conditions))
    print(render(results))
    assert all(LoadResult(**r).ok for r in results.values()), "a server answered nothing"


if __name__ == "__main__":
    main()
