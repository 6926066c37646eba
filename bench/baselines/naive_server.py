"""The baseline: the FastAPI + ONNX Runtime server a user writes in 30 lines.

One request = one ``session.run`` of batch 1, inference inside the ``async`` handler (as most
tutorials do), ORT's default threads (CUDA first when the build has it), Pillow resizes,
palette PNG at the default compression.
Same model, same contract for ``format=png``, so ``bench.loadtest`` measures it like segserve.

    python -m bench.baselines.naive_server models/shapes-fcn/1/model.onnx --port 8001
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from PIL import Image

from service.model_card import ModelCard


def create_app(model_path: str) -> FastAPI:
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # the GPU when the build has it
    providers = [p for p in wanted if p in ort.get_available_providers()]
    session = ort.InferenceSession(model_path, providers=providers)
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    size = (card.input.width, card.input.height)
    mean = np.array(card.input.mean, np.float32).reshape(3, 1, 1)
    std = np.array(card.input.std, np.float32).reshape(3, 1, 1)
    palette = [c for rgb in card.palette() for c in rgb]
    app = FastAPI()

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/segment")
    async def segment(request: Request) -> Response:
        image = Image.open(io.BytesIO(await request.body())).convert("RGB")
        x = np.asarray(image.resize(size), np.float32).transpose(2, 0, 1) / 255.0
        out = session.run(None, {session.get_inputs()[0].name: ((x - mean) / std)[None]})[0][0]
        labels = out if card.output.kind == "labels" else out.argmax(axis=0)
        mask = Image.fromarray(labels.astype(np.uint8), "P").resize(image.size, Image.NEAREST)
        mask.putpalette(palette)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Naive FastAPI + ONNX Runtime baseline server.")
    parser.add_argument("model", help="path to a segserve model.onnx (with its model card)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
