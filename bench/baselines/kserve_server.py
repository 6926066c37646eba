"""KServe's Python model server (the ``kserve`` package) with a custom ``Model`` serving the same
ONNX model over the Open Inference Protocol: input ``image`` BYTES [N], output ``png`` BYTES
[N] (``bench.baselines.oip_segmenter``), both as base64 text in JSON: KServe 0.21 reads a
binary BYTES input by turning each element into UTF-8 text (``InferRequest.from_bytes`` calls
``set_data_from_numpy(..., binary_data=False)``), which fails for JPEG bytes. Runs in its own
venv:

    /tmp/kserve-venv/bin/python -m bench.baselines.kserve_server models/shapes-fcn/1/model.onnx \\
        --port 8002
"""

from __future__ import annotations

import argparse
import base64
import socket
import uuid
from pathlib import Path

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.baselines.oip_segmenter import Segmenter


class SegmentModel(Model):
    def __init__(self, name: str, model_path: str) -> None:
        super().__init__(name)
        self.segmenter = Segmenter(model_path)
        self.ready = True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict | None = None,
        response_headers: dict | None = None,
    ) -> InferResponse:
        images = [base64.b64decode(e) for e in np.asarray(payload.inputs[0].data).ravel()]
        pngs = [base64.b64encode(p).decode() for p in self.segmenter.pngs(images)]
        output = InferOutput(
            name="png",
            shape=[len(pngs)],
            datatype="BYTES",
            data=pngs,
            parameters={"content_type": "base64"},
        )
        # KServe's response model demands an id; a request without one gets a fresh one.
        response_id = payload.id or uuid.uuid4().hex
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=response_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description="KServe model server for the OIP peer bench.")
    parser.add_argument("model", help="path to a segserve model.onnx (with its model card)")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    name = Path(args.model).parent.parent.name
    server = ModelServer(http_port=args.port, grpc_port=_free_port(), enable_grpc=False)
    server.start([SegmentModel(name, args.model)])


if __name__ == "__main__":
    main()
