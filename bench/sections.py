"""The targets ``bench.targets --all`` judges beside its own, each section in its own servers:
graceful overload (``bench.overload``), the input policies (``bench.policies``), the pipeline's
CPU per image against the code before (a source tree given with ``--base``), and the decode
floor of a 4000x3000 request.

Each section returns its verdicts and the lines it adds to targets.md.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image

from bench import overload, policies
from bench.images import sample_jpeg
from bench.server import ROOT, run_offline
from bench.verdict import Verdict

Section = tuple[list[Verdict], list[str]]
PIPELINE_CUT = 0.30  # in-process CPU per image: at least this much less than the code before


def overload_section(model: Path, out: Path, duration: float) -> Section:
    args = overload.parse(["--model", str(model), "--out", str(out), f"--duration={duration}"])
    measured = overload.measure(args)
    verdicts = overload.judge(measured)
    overload.render(measured, verdicts, out)
    return verdicts, [f"Overload levels and plot: {out}/ (capacity {measured.capacity_rps:.1f})"]


def policies_section(out: Path, duration: float) -> Section:
    args = policies.parse(["--out", str(out), f"--duration={duration}"])
    measured = policies.measure(args)
    verdicts = policies.judge(measured)
    policies.render(measured, verdicts, out)
    return verdicts, [f"Input-policy runs: {out}/"]


def pipeline_section(model: Path, base: Path | None, out: Path) -> Section:
    """Offline CPU per image at the best batch, this tree against ``base`` (same model file)."""
    if base is None:
        return [], ["Pipeline CPU target skipped: give --base, a source tree of the code before."]
    out.mkdir(parents=True, exist_ok=True)
    runs = {
        name: run_offline(model, out / f"offline-{name}.json", [], "--batch-sizes=1,8", root=tree)
        for name, tree in (("base", base), ("now", ROOT))
    }
    before, now = (_best(runs[name])["cpu_ms_per_image"] for name in ("base", "now"))
    verdict = Verdict(
        "in-process CPU per 640x480 image vs the code before",
        f"{now:.2f} / {before:.2f} ms = {now / before - 1:+.1%}",
        f"<= -{PIPELINE_CUT:.0%}",
        now <= (1 - PIPELINE_CUT) * before,
    )
    return [verdict], [f"Pipeline: offline runs of both trees in {out}/ (base: {base})"]


def decode_floor_lines(c1_large_p50_ms: float) -> list[str]:
    """What a 4000x3000 request costs against the entropy decode of its JPEG at 1/8 scale."""
    data = sample_jpeg("large")
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (image.width // 8, image.height // 8))
            image.load()
        best = min(best, (time.perf_counter() - started) * 1000)
    return [
        f"Decode floor: the 4000x3000 JPEG decoded at 1/8 scale takes {best:.1f} ms (best of 10); "
        f"the whole request {c1_large_p50_ms:.1f} ms at c=1 (p50): "
        f"{best / c1_large_p50_ms:.0%} of it."
    ]


def _best(offline: dict) -> dict:
    return dict(max(offline["batches"], key=lambda b: b["images_per_s"]))
