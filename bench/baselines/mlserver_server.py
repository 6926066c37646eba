"""Seldon MLServer with a custom runtime (``SegmentRuntime``) serving the same ONNX model over
the Open Inference Protocol: input ``image`` BYTES [N], output ``png`` BYTES [N]
(``bench.baselines.oip_segmenter``). MLServer's REST door has no binary tensor data, so images
travel as base64 text in JSON both ways (``parameters.content_type = "base64"``).

The launcher writes MLServer's ``settings.json`` and ``model-settings.json`` to a temporary
folder and runs ``mlserver start`` on it, in MLServer's own venv:

    /tmp/mlserver-venv/bin/python -m bench.baselines.mlserver_server \\
        models/shapes-fcn/1/model.onnx --port 8003
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from bench.baselines.oip_segmenter import Segmenter

ROOT = Path(__file__).resolve().parent.parent.parent


class SegmentRuntime(MLModel):
    async def load(self) -> bool:
        self.segmenter = Segmenter(str(self.settings.parameters.uri))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = np.asarray(payload.inputs[0].data.root).ravel()
        images = [base64.b64decode(e) for e in data]
        pngs = [base64.b64encode(p).decode() for p in self.segmenter.pngs(images)]
        output = ResponseOutput(
            name="png",
            shape=[len(pngs)],
            datatype="BYTES",
            data=pngs,
            parameters={"content_type": "base64"},
        )
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description="MLServer for the OIP peer bench.")
    parser.add_argument("model", help="path to a segserve model.onnx (with its model card)")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlserver-bench-"))
    settings = {
        "host": "127.0.0.1",
        "http_port": args.port,
        "grpc_port": _free_port(),
        "metrics_port": _free_port(),
        # In the server process: MLServer 1.7.1's worker pool dies at start with uvloop >= 0.22
        # ("There is no current event loop"), and on 2 cores a second process only competes.
        "parallel_workers": 0,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": Path(args.model).parent.parent.name,
        "implementation": "bench.baselines.mlserver_server.SegmentRuntime",
        "parameters": {"uri": str(Path(args.model).resolve())},
    }
    (folder / "model-settings.json").write_text(json.dumps(model))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    mlserver = Path(sys.executable).with_name("mlserver")
    os.execv(mlserver, [str(mlserver), "start", str(folder)])


if __name__ == "__main__":
    main()
