"""Shared test helpers: a tiny ONNX model whose answer is known, and a real server process to
ask it (its masks, its metrics, its queue).

The tiny model is a 1x1 convolution over the un-normalised RGB input (mean 0, std 1, so x = p/255):
    background = 0.5,  red = 2R - G - B,  green = 2G - R - B
so a pure red pixel is class 1, a pure green pixel class 2, black/white/grey pixels background.
Tests can therefore predict the exact mask of any synthetic image they draw.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service import imaging
from service.model_card import InputSpec, ModelCard, OutputSpec, TrainingCard

if TYPE_CHECKING:
    from tritonclient.http import InferenceServerClient

ROOT = Path(__file__).resolve().parent.parent
TINY_LABELS = ["background", "red", "green"]
TINY_WEIGHTS = np.array([[0, 0, 0], [2, -1, -1], [-1, 2, -1]], dtype=np.float32).reshape(3, 3, 1, 1)
TINY_BIAS = np.array([0.5, 0, 0], dtype=np.float32)

SLOW_SIZE = 128  # input side of the slow model; each 32-channel 3x3 conv costs ~3 ms on one core
# Small input limits for the shared server (conftest), so the 413 tests stay cheap.
SERVER_LIMITS = {"SEGSERVE_MAX_BODY_BYTES": "2000000", "SEGSERVE_MAX_PIXELS": "4000000"}
# A long batch window holds requests in the queue: "in flight" for as long as the test needs.
HOLDING = {
    "SEGSERVE_MAX_BATCH_SIZE": "64",
    "SEGSERVE_MAX_BATCH_DELAY_MS": "1500",
    "SEGSERVE_BATCH_EAGER": "false",
}


def tiny_card(
    name: str = "tiny", size: int = 32, output: str = "logits", **policy: object
) -> ModelCard:
    """The tiny model's card; ``policy``: the input policy fields (resize, tile, ...)."""
    return ModelCard.with_default_colors(
        TINY_LABELS,
        name=name,
        description="1x1 conv colour classifier for tests",
        input=InputSpec(height=size, width=size, mean=(0, 0, 0), std=(1, 1, 1), **policy),
        output=OutputSpec(kind=output),
        training=TrainingCard(architecture="conv1x1", dataset="none", val_miou=1.0),
    )


def tiny_model(
    card: ModelCard,
    *,
    any_size: bool = False,
    weights: np.ndarray = TINY_WEIGHTS,
    bias: np.ndarray = TINY_BIAS,
) -> onnx.ModelProto:
    """Build the model for ``card``: dynamic batch, the card's spatial size (or any, symbolic
    like model_export's exports), logits or uint8 labels. ``weights`` (3, 3, k, k), odd k, and
    ``bias`` (3,) replace the colour classifier's: a k x k convolution padded to keep the size."""
    h, w = ("H", "W") if any_size else (card.input.height, card.input.width)
    pad = weights.shape[-1] // 2
    conv = helper.make_node(
        "Conv", ["input", "W", "B"], ["logits"], kernel_shape=list(weights.shape[2:]),
        pads=[pad] * 4,
    )  # fmt: skip
    nodes = [conv]
    out_name = "logits"
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, h, w])
    if card.output.kind == "labels":
        nodes += [
            helper.make_node("ArgMax", ["logits"], ["argmax"], axis=1, keepdims=0),
            helper.make_node("Cast", ["argmax"], ["labels"], to=TensorProto.UINT8),
        ]
        out_name = "labels"
        out = helper.make_tensor_value_info(out_name, TensorProto.UINT8, ["N", h, w])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [out],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.ravel()),
            helper.make_tensor("B", TensorProto.FLOAT, bias.shape, bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, card.to_metadata())
    onnx.checker.check_model(model)
    return model


def write_slow_model(repo: Path, name: str = "slow", convs: int = 60) -> Path:
    """A real, slow segmentation graph: ``convs`` 32-channel 3x3 convolutions at 128x128.

    Same interface and card as the tiny model (3 classes, logits), ~0.2 s per image on one
    core with the default 60 convolutions; the weights are shared so the file stays ~40 KB."""
    channels, size = 32, SLOW_SIZE
    rng = np.random.default_rng(0)
    weights = {
        "w_in": rng.standard_normal((channels, 3, 3, 3)) / 5,
        "w": rng.standard_normal((channels, channels, 3, 3)) / (3 * channels**0.5),
        "w_out": rng.standard_normal((3, channels, 1, 1)) / channels,
    }
    nodes = [helper.make_node("Conv", ["input", "w_in"], ["h0"], pads=[1, 1, 1, 1])]
    for i in range(convs):
        nodes += [
            helper.make_node("Conv", [f"h{i}", "w"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"]),
        ]
    nodes.append(helper.make_node("Conv", [f"h{convs}", "w_out"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, size, size])],
        initializer=[
            helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
            for k, v in weights.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, tiny_card(name=name, size=size).to_metadata())
    path = repo / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def write_tiny_model(
    repo: Path, name: str = "tiny", version: int = 1, *, model: dict | None = None, **card_kwargs
) -> Path:
    """The tiny model (``model``: ``tiny_model``'s keywords) as ``repo/name/version``."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_model(tiny_card(name=name, **card_kwargs), **(model or {})), path)
    return path


def expected_scores(rgb: np.ndarray) -> np.ndarray:
    """The tiny model's scores (3, H, W) for an (H, W, 3) uint8 image."""
    x = rgb.astype(np.float32) / 255.0
    scores = np.einsum("hwc,kc->khw", x, TINY_WEIGHTS[:, :, 0, 0]) + TINY_BIAS[:, None, None]
    return scores.astype(np.float32)


def expected_labels(rgb: np.ndarray) -> np.ndarray:
    """The tiny model's answer for an (H, W, 3) uint8 image, computed at full resolution."""
    return expected_scores(rgb).argmax(axis=0).astype(np.uint8)


def expected_mask(image: Image.Image, side: int) -> np.ndarray:
    """What the service must answer: the tiny model's labels for the input ``imaging.prepare``
    makes (its resize is imaging's to choose and test), resized back by nearest neighbour:
    output pixel i takes input pixel floor((i + 0.5) n / N)."""
    x = imaging.prepare(image.convert("RGB"), tiny_card(size=side).input)  # p / 255, CHW
    labels = expected_labels(np.rint(x * 255).astype(np.uint8).transpose(1, 2, 0))
    width, height = image.size
    rows = (2 * np.arange(height) + 1) * side // (2 * height)
    cols = (2 * np.arange(width) + 1) * side // (2 * width)
    return labels[np.ix_(rows, cols)]


def png_labels(response: httpx.Response) -> np.ndarray:
    return palette_labels(response.content)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the drain; kill only if it hangs. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(
    env: dict[str, str], log_path: Path, ready_timeout: float = 60.0, wait_ready: bool = True
) -> Server:
    """Start ``python -m service`` on 127.0.0.1 with ``env`` on top of a clean SEGSERVE_ env."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    full_env |= {
        "SEGSERVE_HOST": "127.0.0.1",
        "SEGSERVE_PORT": str(port),
        "SEGSERVE_PROVIDER": "cpu",
        "SEGSERVE_LOG_LEVEL": "info",
        **env,
    }
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    if wait_ready:
        wait_until_ready(server, ready_timeout)
    return server


def wait_until_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"server not ready after {timeout}s:\n{server.log()}")


@contextlib.contextmanager
def running_server(env: dict[str, str], log_path: Path, **kwargs) -> Iterator[Server]:
    server = start_server(env, log_path, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def metric_samples(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's ``/metrics``: (name, labels) -> value."""
    text = client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def queue_depth(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "segserve_queue_depth"
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def oip_client(server: Server) -> InferenceServerClient:
    """Triton's official HTTP client, pointed at ``server``'s Open Inference Protocol routes
    (imported here: only the OIP tests need it and its gevent)."""
    from tritonclient.http import InferenceServerClient

    return InferenceServerClient(server.base_url.removeprefix("http://"))


def access_line(server: Server, request_id: str, timeout: float = 5.0) -> dict:
    """The one access-log line of the request sent with ``X-Request-ID: request_id`` (written
    just after the answer is sent, so it is waited for)."""

    def lines() -> list[dict]:
        found = [json.loads(line) for line in server.log().splitlines() if request_id in line]
        return [line for line in found if line.get("logger") == "segserve.access"]

    wait_for(lambda: bool(lines()), timeout)
    (line,) = lines()
    return line


# -- the Open Inference Protocol with Triton's clients (tritonclient.http or tritonclient.grpc) ---
def images_tensor(triton: ModuleType, *images: bytes) -> Any:
    """Input ``image`` of ``triton``'s client: ``images`` as one BYTES tensor (binary data)."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def zeros_tensor(triton: ModuleType, name: str, shape: list[int], datatype: str) -> Any:
    tensor = triton.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, {"FP32": np.float32, "INT32": np.int32}[datatype]))
    return tensor


def prepared_input(side: int, datatype: str) -> tuple[np.ndarray, np.ndarray]:
    """Two random black-and-primary images of ``side`` and the model input a client would make
    of them, (2, 3, side, side) in ``datatype`` (FP32 or FP16)."""
    rng = np.random.default_rng(7)
    pixels = rng.choice([0, 255], size=(2, side, side, 3)).astype(np.uint8)
    dtype = np.float32 if datatype == "FP32" else np.float16
    return pixels, (pixels.transpose(0, 3, 1, 2) / 255).astype(dtype)


def palette_labels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "P"
    return np.asarray(image)


def segment_answer(client: httpx.Client, data: bytes, fmt: str) -> httpx.Response:
    """``/segment``'s 200 answer for ``data`` in ``fmt``."""
    response = client.post("/segment", content=data, params={"format": fmt})
    assert response.status_code == 200, response.text
    return response
