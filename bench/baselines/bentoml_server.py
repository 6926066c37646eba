"""The same model behind BentoML (adaptive batching), as its docs compose pre/post-processing.

BentoML is not a segserve dependency: run this from its own venv (see docs/PERFORMANCE.md),
    /tmp/bentoml-venv/bin/python -m bench.baselines.bentoml_server MODEL --port 8003
It answers ``POST /segment`` (multipart, part ``image``) with the same palette PNG, so
``bench.loadtest --multipart`` measures it like segserve; ``GET /readyz`` is BentoML's own.

A batchable BentoML API takes and returns *lists* (JSON or multipart in, JSON out), so it cannot
answer one request with one PNG. BentoML's documented shape for that is two services: ``Segment``
(HTTP: decode, normalise, encode) calls the batchable ``SegmentModel`` through ``bentoml.depends``
(its own worker process, pickled arrays over a Unix socket), whose dispatcher forms the batches.
``max_latency_ms`` is not a batch window (the window adapts to traffic) but a deadline past which
queued requests are refused; BentoML's default (60 s) is kept so it never sheds load, like
LitServe. Known quirk: ``Segment`` pools connections to ``SegmentModel`` for 15 s but the latter's
uvicorn closes them after 5 s idle, so after a pause a few requests fail (500) on a stale one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import bentoml
import numpy as np
from PIL import Image
from starlette.responses import Response

from bench.baselines.user_pipeline import UserPipeline

MODEL_ENV = "BENTOML_BASELINE_MODEL"  # the workers import this module: the model path rides along
MAX_BATCH_SIZE = 8


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class SegmentModel:
    def __init__(self) -> None:
        self.pipeline = UserPipeline(os.environ[MODEL_ENV])

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE)
    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline.infer(x)


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Segment:
    model = bentoml.depends(SegmentModel)

    def __init__(self) -> None:
        # For the card and the pre/post-processing: inference runs in SegmentModel's process.
        self.pipeline = UserPipeline(os.environ[MODEL_ENV])

    # The annotation is for BentoML's schema; a Response is sent as is (PNG at compress_level=1,
    # like the other baselines, where a returned Image would be saved at PNG's default level 6).
    @bentoml.api(route="/segment")
    async def segment(self, image: Image.Image) -> Image.Image:
        size, x = self.pipeline.prepare(image)
        labels = (await self.model.to_async.infer(x[None]))[0]
        return Response(self.pipeline.png(labels, size), media_type="image/png")  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description="BentoML baseline server.")
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    os.environ[MODEL_ENV] = str(Path(args.model).resolve())
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage report from a benchmark
    root = Path(__file__).resolve().parents[2]
    # exec, so the PID bench.server stops is BentoML's arbiter, which stops its workers.
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "bench.baselines.bentoml_server:Segment",
            "--working-dir",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    )


if __name__ == "__main__":
    main()
