"""The same model behind LitServe (Lightning AI's FastAPI-based server with dynamic batching).

LitServe is not a segserve dependency: run this from its own venv (see docs/PERFORMANCE.md),
    /tmp/litserve-venv/bin/python -m bench.baselines.litserve_server MODEL --port 8002
It answers ``POST /segment`` (multipart, part ``image``) with the same palette PNG, so
``bench.loadtest --multipart`` measures it like segserve. Pre/post-processing is what a LitServe
user would write (Pillow + NumPy, batch via ``np.stack``), not segserve's code.
"""

from __future__ import annotations

import argparse
import io

import litserve as ls
import numpy as np
from fastapi import Response
from PIL import Image

from bench.baselines.user_pipeline import UserPipeline


class SegmentAPI(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device: str) -> None:
        self.pipeline = UserPipeline(self.model_path)

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return self.pipeline.prepare(Image.open(io.BytesIO(request["image"].file.read())))

    def batch(self, inputs):  # type: ignore[no-untyped-def]
        return [size for size, _ in inputs], np.stack([x for _, x in inputs])

    def predict(self, batch):  # type: ignore[no-untyped-def]
        sizes, x = batch
        return sizes, self.pipeline.infer(x)

    def unbatch(self, output):  # type: ignore[no-untyped-def]
        sizes, labels = output
        return list(zip(sizes, labels, strict=True))

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        size, labels = output
        return Response(self.pipeline.png(labels, size), media_type="image/png")


def main() -> None:
    parser = argparse.ArgumentParser(description="LitServe baseline server.")
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args()
    api = SegmentAPI(
        args.model,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        api_path="/segment",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, healthcheck_path="/readyz")
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
