"""The soak's machinery on a few seconds of load (the real 10-minute soak is run by hand:
``python -m bench.soak``, figures in docs/RELIABILITY.md)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from bench.soak import main
from tests.support import write_tiny_model


def test_soak_measures_the_maximum_then_holds_a_fraction_of_it(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "models")
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    # Thresholds opened wide: this checks the machinery, not a 3-second latency trend.
    main(
        [
            "--model",
            str(model),
            "--duration",
            "3",
            "--segment",
            "1",
            "--probe",
            "1",
            "--probe-concurrency",
            "4",
            "--rss-interval",
            "0.25",
            "--p99-ratio",
            "1000",
            "--rss-growth",
            "1",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--no-progress",
        ]
    )

    report = json.loads(out.read_text())
    assert report["passed"] is True
    assert report["errors"] == {}
    assert report["max_rps"] > 0
    assert report["offered_rps"] == report["spec"]["fraction"] * report["max_rps"]
    assert len(report["segments"]) >= 2
    assert all(s["result"]["ok"] > 0 for s in report["segments"])
    assert len(report["rss_mb"]) >= 8  # every 0.25 s over ~3 s
    assert all(mb > 10 for _, mb in report["rss_mb"])
    assert Image.open(plot).size[0] > 0
