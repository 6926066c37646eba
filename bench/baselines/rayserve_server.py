"""The same model behind Ray Serve (FastAPI ingress, ``@serve.batch``).

Ray is not a segserve dependency: run this from its own venv (see docs/PERFORMANCE.md),
    /tmp/rayserve-venv/bin/python -m bench.baselines.rayserve_server MODEL --port 8004
It answers ``POST /segment`` (multipart, part ``image``) with the same palette PNG, so
``bench.loadtest --multipart`` measures it like segserve, and ``GET /readyz``. One replica; the
request goes client -> Ray's HTTP proxy actor -> the replica actor (Ray RPC), where the handler
decodes and ``@serve.batch`` (batch 8, 5 ms, like LitServe) stacks the arrays for one
``session.run``. This process is the Ray driver: SIGTERM/SIGINT shut Serve and Ray down, which
ends every process Ray started (GCS, raylet, the actors' workers).
"""

# No `from __future__ import annotations`: FastAPI must resolve UploadFile in the ingress class.
import argparse
import io
import os
import signal
import threading
from typing import Annotated

import numpy as np
import ray
from fastapi import FastAPI, File, Response, UploadFile
from PIL import Image
from ray import serve

from bench.baselines.user_pipeline import UserPipeline

MAX_BATCH_SIZE = 8
BATCH_WAIT_S = 0.005

app = FastAPI()


# Ray Serve's default max_ongoing_requests (5) caps a replica below one batch of 8, and the proxy
# then backs off: at c=32 it served 5 req/s with the cores idle. Ray's docs: set it at least to
# the batch size; 64 lets every connection of the sweep be in the replica at once.
@serve.deployment(num_replicas=1, max_ongoing_requests=64)
@serve.ingress(app)
class Segment:
    def __init__(self, model_path: str) -> None:
        self.pipeline = UserPipeline(model_path)

    @app.get("/readyz")
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @app.post("/segment")
    async def segment(self, image: Annotated[UploadFile, File()]) -> Response:
        size, x = self.pipeline.prepare(Image.open(io.BytesIO(await image.read())))
        labels = await self.infer(x)
        return Response(self.pipeline.png(labels, size), media_type="image/png")

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def infer(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.pipeline.infer(np.stack(xs)))


def main() -> None:
    parser = argparse.ArgumentParser(description="Ray Serve baseline server.")
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8004)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a benchmark
    # No large objects travel through Ray's object store here: keep it small (default: 30 % of RAM).
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(Segment.bind(os.path.abspath(args.model)), route_prefix="/")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
