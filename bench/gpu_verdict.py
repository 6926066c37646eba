"""The GPU target, judged from ``bench/gpu.sh``'s results: the service at concurrency 64 against
the offline limit at the same batch size (the servers' largest batch), per provider.

    python -m bench.gpu_verdict bench/results/gpu-cuda bench/results/gpu-tensorrt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.verdict import Verdict

BOUND = 0.8


def verdict(results: Path, batch_size: int) -> Verdict:
    """``results``: one provider's folder, with offline-io-true.json, offline-io-false.json and
    sweep.json (segserve at c=64)."""
    offline = {
        io: json.loads((results / f"offline-io-{io}.json").read_text()) for io in ("true", "false")
    }
    same = {
        io: next(b for b in run["batches"] if b["batch_size"] == batch_size)["images_per_s"]
        for io, run in offline.items()
    }
    (served,) = json.loads((results / "sweep.json").read_text())["results"]["segserve"]
    ratio = served["throughput_rps"] / same["true"]
    return Verdict(
        f"{results.name}: service at c={served['concurrency']} vs offline at batch {batch_size}",
        f"{served['throughput_rps']:.1f} req/s = {ratio:.3f} x {same['true']:.1f} img/s "
        f"(IO binding off offline: {same['false']:.1f} img/s)",
        f">= {BOUND} x",
        ratio >= BOUND,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    print("| target | measured | bound | verdict |\n|---|---|---|---|")
    for folder in args.results:
        print(verdict(folder, args.batch_size).row())


if __name__ == "__main__":
    main()
