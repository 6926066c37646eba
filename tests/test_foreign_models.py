"""Models exported elsewhere (tests/graphs.py), annotated by the CLI and served by a real server
as they are: each answer is compared with labels the test computes itself, in NumPy and torch.

The reduced-resolution model (scores at 1/4 of the input, as SegFormer's) is checked under the
default policy, native and tiles against torch's ``F.interpolate`` (bilinear, half-pixel
centres) then argmax. Where the service and torch round a blended score differently a pixel on a
two-class tie could differ, so those comparisons ask for 99.9 % agreement (they agree exactly on
these images today); the others are exact.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as coco
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from model_export.__main__ import main
from model_export.evaluate import onnx_predictor, onnx_session
from service import imaging
from service.model_card import voc_palette
from tests import graphs
from tests.images import encoded, scene
from tests.support import (
    TINY_LABELS,
    Server,
    expected_labels,
    expected_mask,
    free_port,
    oip_client,
    palette_labels,
    running_server,
    tiny_card,
)

UNNORMALISED = ["--mean", "0,0,0", "--std", "1,1,1"]  # x = p / 255, as the graphs expect
# name: graph, input side, annotate options
MODELS = {
    "pixels": (graphs.nhwc_pixels(), 48, []),
    "torchvision": (graphs.two_outputs(), 40, [*UNNORMALISED, "--output", "out"]),
    "argmax": (graphs.argmax_int64(), 32, UNNORMALISED),
    "half": (graphs.half(), 32, UNNORMALISED),
    "quarter": (graphs.strided(), 64, UNNORMALISED),
}
ADE_CLASSES = 151
ADE_SIDE = 128
TILE, OVERLAP = 128, 0.25


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every graph saved as its exporter left it, then given a card by ``annotate``."""
    repo = tmp_path_factory.mktemp("foreign")
    ade = graphs.nearest_colour(np.array(voc_palette(ADE_CLASSES)))
    models = {name: (*model, TINY_LABELS) for name, model in MODELS.items()}
    models["ade"] = (ade, ADE_SIDE, UNNORMALISED, [f"class{i}" for i in range(ADE_CLASSES)])
    for name, (graph, side, options, labels) in models.items():
        path = repo / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(graph, path)
        args = ["annotate", str(path), "--name", name, "--input-size", f"{side}x{side}"]
        assert main([*args, "--labels", ",".join(labels), *options]) == 0
    return repo


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    repo: Path, grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {
        "SEGSERVE_GRPC_PORT": str(grpc_port),
        "SEGSERVE_MODEL_REPOSITORY": str(repo),
        "SEGSERVE_MAX_BATCH_DELAY_MS": "5",
        "SEGSERVE_WORKER_THREADS": "2",
    }
    with running_server(env, tmp_path_factory.mktemp("server") / "server.log") as srv:
        yield srv


def _labels(server: Server, image: Image.Image, model: str, **params: object) -> np.ndarray:
    with server.client() as client:
        response = client.post(
            "/segment", content=encoded(image), params={"model": model, **params}
        )
    assert response.status_code == 200, response.text
    return palette_labels(response.content)


@pytest.mark.parametrize("model", ["pixels", "torchvision", "argmax"])
def test_a_foreign_model_answers_as_the_tiny_classifier(server: Server, model: str) -> None:
    for seed in range(3):
        image = scene(seed)
        expected = expected_mask(image, MODELS[model][1])
        np.testing.assert_array_equal(_labels(server, image, model), expected)


def test_a_half_precision_model_is_served_in_half_precision(server: Server) -> None:
    # Black, white and primary pixels at the input size: no blends, so no near-ties in fp16.
    rng = np.random.default_rng(5)
    pixels = rng.choice([0, 255], size=(32, 32, 3)).astype(np.uint8)
    labels = _labels(server, Image.fromarray(pixels), "half")
    np.testing.assert_array_equal(labels, expected_labels(pixels))


def test_models_list_the_layout_type_and_normalisation_of_their_input(server: Server) -> None:
    with server.client() as client:
        pixels = client.get("/models/pixels").json()["versions"][0]
        quarter = client.get("/models/quarter").json()["versions"][0]
    assert (pixels["input"]["layout"], pixels["input"]["dtype"]) == ("NHWC", "uint8")
    assert pixels["normalization"] is None
    assert quarter["normalization"]["mean"] == [0, 0, 0]


# -- scores at 1/4 of the input -------------------------------------------------------------------
def _torch_labels(x: np.ndarray) -> np.ndarray:
    """The strided graph's labels for model inputs ``x`` (N, 3, H, W): its scores computed in
    NumPy, scaled by torch as Hugging Face's post-processing does, argmax."""
    return _torch_scores(x).argmax(axis=1)


def _torch_scores(x: np.ndarray) -> np.ndarray:
    scores = torch.from_numpy(graphs.strided_scores(x))
    size = x.shape[2:]
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False).numpy()


def _blocks(seed: int, width: int, height: int, block: int = 6) -> Image.Image:
    """Black, white, red and green blocks: many class boundaries for the scaling to get right.
    No 4x4 mix of these colours scores exactly 0.5 (background) or ties red with green, so only
    rounding can tie two classes."""
    rng = np.random.default_rng(seed)
    colours = np.array([(0, 0, 0), (255, 255, 255), (229, 11, 17), (13, 211, 7)], np.uint8)
    ids = rng.integers(0, len(colours), (-(-height // block), -(-width // block)))
    ids = np.repeat(np.repeat(ids, block, axis=0), block, axis=1)[:height, :width]
    return Image.fromarray(colours[ids])


def _agreement(got: np.ndarray, expected: np.ndarray) -> float:
    assert got.shape == expected.shape
    return float((got == expected).mean())


def test_quarter_resolution_scores_are_scaled_under_the_default_policy(server: Server) -> None:
    side = MODELS["quarter"][1]
    for seed in range(3):
        image = _blocks(seed, 80, 60)
        x = imaging.prepare(image, tiny_card(size=side).input)  # the stretched input
        labels = _torch_labels(x[None])[0]
        height, width = image.height, image.width  # back to the image, nearest neighbour
        rows = (2 * np.arange(height) + 1) * side // (2 * height)
        cols = (2 * np.arange(width) + 1) * side // (2 * width)
        expected = labels[np.ix_(rows, cols)]
        assert _agreement(_labels(server, image, "quarter"), expected) >= 0.999


def test_quarter_resolution_scores_are_scaled_under_native(server: Server) -> None:
    image = _blocks(7, 100, 70)
    pixels = np.asarray(image).transpose(2, 0, 1)[None] / np.float32(255)
    # Padded to the next 32-pixel bucket (96 x 128) by repeating the last column and row.
    x = np.pad(pixels, ((0, 0), (0, 0), (0, 26), (0, 28)), mode="edge")
    expected = _torch_labels(x)[0, :70, :100]
    got = _labels(server, image, "quarter", resize="native")
    assert _agreement(got, expected) >= 0.999


def test_quarter_resolution_scores_are_scaled_under_tiles(server: Server) -> None:
    image = _blocks(8, 200, 150)
    got = _labels(server, image, "quarter", resize="tiles", tile=TILE, overlap=OVERLAP)
    assert _agreement(got, _tiles_reference(np.asarray(image))) >= 0.999


def _tiles_reference(pixels: np.ndarray) -> np.ndarray:
    """Windows of TILE overlapping by OVERLAP, each window's scaled scores weighted by a Gaussian
    (sigma TILE / 8, 1 at the centre, at least 1e-6) and summed, then argmax (docs/API.md)."""
    height, width = pixels.shape[:2]
    axis = np.exp(-0.5 * ((np.arange(TILE) - (TILE - 1) / 2) / (TILE / 8)) ** 2)
    weight = np.maximum(np.outer(axis, axis) / np.outer(axis, axis).max(), 1e-6)
    sums = np.zeros((3, height, width), np.float32)
    for y in _origins(height):
        for x in _origins(width):
            crop = pixels[y : y + TILE, x : x + TILE]
            h, w = crop.shape[:2]
            window = np.zeros((1, 3, TILE, TILE), np.float32)
            window[0, :, :h, :w] = crop.transpose(2, 0, 1) / 255
            weighted = _torch_scores(window)[0] * weight.astype(np.float32)
            sums[:, y : y + h, x : x + w] += weighted[:, :h, :w]
    return sums.argmax(axis=0)


def _origins(length: int) -> list[int]:
    step = int(TILE * (1 - OVERLAP))
    return [*range(0, length - TILE, step), length - TILE] if length > TILE else [0]


def test_evaluate_runs_a_foreign_model_as_the_service_does(repo: Path) -> None:
    x = (np.asarray(_blocks(9, 64, 64)).transpose(2, 0, 1)[None] / 255).astype(np.float32)
    predict = onnx_predictor(onnx_session(repo / "quarter" / "1" / "model.onnx"))
    assert _agreement(predict(x), _torch_labels(x)) >= 0.999


def test_oip_scores_of_a_quarter_resolution_model_are_at_its_input_size(server: Server) -> None:
    side = MODELS["quarter"][1]
    pixels = np.asarray(_blocks(3, side, side))
    x = (pixels.transpose(2, 0, 1)[None] / 255).astype(np.float32)
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    triton: InferenceServerClient = oip_client(server)
    outputs = [InferRequestedOutput(name, binary_data=True) for name in ("scores", "labels")]
    result = triton.infer("quarter", [tensor], outputs=outputs)
    scores = result.as_numpy("scores")
    assert scores.shape == (1, 3, side, side)
    np.testing.assert_allclose(scores, _torch_scores(x), atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("labels"), scores.argmax(axis=1))


def test_oip_takes_uint8_pixels_for_a_model_that_normalises_them(server: Server) -> None:
    side = MODELS["pixels"][1]
    pixels = np.asarray(scene(4, width=side, height=side))
    tensor = InferInput("input", [1, 3, side, side], "UINT8")
    tensor.set_data_from_numpy(pixels.transpose(2, 0, 1)[None].copy())
    triton: InferenceServerClient = oip_client(server)
    labels = triton.infer("pixels", [tensor], outputs=[InferRequestedOutput("labels")])
    np.testing.assert_array_equal(labels.as_numpy("labels")[0], expected_labels(pixels))
    with server.client() as client:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, side, side],
                            "data": [0.0] * (3 * side * side)}]}  # fmt: skip
        refused = client.post("/v2/models/pixels/infer", json=body)
    assert refused.status_code == 400
    assert f"input 'input' is UINT8 [N,3,{side},{side}]" in refused.json()["error"]


def test_grpc_takes_uint8_pixels_listed_or_raw(server: Server, grpc_port: int) -> None:
    # Triton's messages (the protocol's, by the same names): the service's own generated module
    # cannot share a process with tritonclient's.
    side = MODELS["pixels"][1]
    pixels = np.asarray(scene(5, width=side, height=side))
    chw = pixels.transpose(2, 0, 1)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="UINT8", shape=[1, 3, side, side]
    )
    listed = pb.ModelInferRequest(model_name="pixels", inputs=[tensor])
    listed.inputs[0].contents.uint_contents.extend(chw.ravel().tolist())
    raw = pb.ModelInferRequest(
        model_name="pixels", inputs=[tensor], raw_input_contents=[chw.tobytes()]
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request in (listed, raw):
            request.outputs.add(name="labels")
            response = stub.ModelInfer(request, timeout=30)
            labels = np.frombuffer(response.raw_output_contents[0], np.uint8)
            np.testing.assert_array_equal(labels.reshape(side, side), expected_labels(pixels))


# -- 151 classes (ADE20K's 150 and background) ---------------------------------------------------
def _ade_image() -> tuple[Image.Image, np.ndarray]:
    """8x8 blocks, block i of class i % 151, in its class colour: the model's exact answer."""
    blocks = ADE_SIDE // 8
    ids = (np.arange(blocks * blocks) % ADE_CLASSES).reshape(blocks, blocks)
    ids = np.repeat(np.repeat(ids, 8, axis=0), 8, axis=1).astype(np.uint8)
    colours = np.array(voc_palette(ADE_CLASSES), np.uint8)
    return Image.fromarray(colours[ids]), ids


def test_151_classes_make_a_valid_palette_png(server: Server) -> None:
    image, ids = _ade_image()
    with server.client() as client:
        response = client.post("/segment", content=encoded(image), params={"model": "ade"})
    assert response.status_code == 200, response.text
    png = Image.open(io.BytesIO(response.content))
    assert png.mode == "P"
    palette = np.array(png.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(palette[:ADE_CLASSES], voc_palette(ADE_CLASSES))
    np.testing.assert_array_equal(np.asarray(png), ids)


# pycocotools 2.0.x predates NumPy 2's __array__(copy=...) protocol; harmless here.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_151_classes_give_one_correct_rle_per_class(server: Server) -> None:
    image, ids = _ade_image()
    with server.client() as client:
        answer = client.post(
            "/segment", content=encoded(image), params={"model": "ade", "format": "rle"}
        ).json()
    assert [m["class_id"] for m in answer["masks"]] == list(range(ADE_CLASSES))
    for entry in answer["masks"]:
        expected = ids == entry["class_id"]
        assert entry["label"] == f"class{entry['class_id']}"
        assert entry["area"] == expected.sum()
        rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
        np.testing.assert_array_equal(coco.decode(rle), expected)
