"""How long one forward pass takes in ONNX Runtime on this machine's CPU.

The model alone, at its card's input size: no decoding, resizing or encoding (``bench/`` measures
the service end to end). Warm-up runs first, so one-time allocation is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.card import card_of_file
from model_export.evaluate import onnx_session


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    runs: int
    batch: int
    threads: int

    def __str__(self) -> str:
        return (
            f"median {self.median_ms:.2f} ms, p90 {self.p90_ms:.2f} ms per batch of {self.batch} "
            f"({self.runs} runs, {self.threads} intra-op threads, CPUExecutionProvider)"
        )


def measure(path: Path, *, runs: int = 100, warmup: int = 10, batch: int = 1,
            threads: int = 2) -> Latency:  # fmt: skip
    card = card_of_file(path)
    session = onnx_session(path, threads)
    shape = (batch, 3, card.input.height, card.input.width)
    x = np.random.default_rng(0).standard_normal(shape).astype(card.input.dtype)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return Latency(float(np.median(times)), float(np.percentile(times, 90)), runs, batch, threads)
