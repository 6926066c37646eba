"""The Open Inference Protocol over gRPC (service/oip_grpc.py) against a real server, with
Triton's own gRPC client: health and metadata, BYTES images and FP32/FP16 tensors in, requested
outputs back as raw contents, answers equal to /segment's, errors as InferenceServerException
with the gRPC status and our message, calls counted in the metrics, and API keys enforced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from tests.images import encode, png_declaring, quadrants
from tests.support import (
    SERVER_LIMITS,
    Server,
    expected_labels,
    free_port,
    images_tensor,
    metric_samples,
    palette_labels,
    prepared_input,
    running_server,
    segment_answer,
    wait_for,
    zeros_tensor,
)

SIDE = 24  # tiny v2, the default model's latest version (tests/conftest.py)
OUTPUTS = ("labels", "png", "rle")


@pytest.fixture
def triton(server: Server, grpc_port: int) -> Iterator[InferenceServerClient]:
    client = InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield client
    client.close()


def images_input(*images: bytes) -> InferInput:
    return images_tensor(tritonclient.grpc, *images)


def wanted(*names: str) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(name) for name in names]


# -- health and metadata ------------------------------------------------------------------------
def test_server_health_and_metadata(triton: InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert (metadata.name, list(metadata.extensions)) == ("segserve", [])
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny-b", "1")
    assert not triton.is_model_ready("tiny", "9")
    assert not triton.is_model_ready("nope")


def test_model_metadata_is_the_rest_doors(
    triton: InferenceServerClient, client: httpx.Client
) -> None:
    metadata = triton.get_model_metadata("tiny", as_json=True)
    rest = client.get("/v2/models/tiny").json()
    for tensor in metadata["inputs"] + metadata["outputs"]:
        tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 travels as text in JSON
    assert metadata == rest
    assert triton.get_model_metadata("tiny", "1").inputs[1].shape == [-1, 3, 32, 32]


# -- infer --------------------------------------------------------------------------------------
def test_bytes_images_answer_as_segment_does(
    triton: InferenceServerClient, client: httpx.Client
) -> None:
    images = [encode(quadrants(64, 48), "PNG"), encode(quadrants(64, 48).rotate(180), "JPEG")]
    result = triton.infer("tiny", [images_input(*images)], outputs=wanted(*OUTPUTS))
    assert result.get_response().model_version == "2"
    labels, pngs, rles = (result.as_numpy(name) for name in OUTPUTS)
    assert (labels.dtype, labels.shape, pngs.shape, rles.shape) == (
        np.uint8,
        (2, 48, 64),
        (2,),
        (2,),
    )
    for i, data in enumerate(images):
        png = segment_answer(client, data, "png").content
        assert pngs[i] == png
        np.testing.assert_array_equal(labels[i], palette_labels(png))
        assert json.loads(rles[i]) == segment_answer(client, data, "rle").json()
    assert {1, 2} <= set(np.unique(labels).tolist())  # the image really has both classes


def test_requested_outputs_come_in_the_order_asked(triton: InferenceServerClient) -> None:
    image = images_input(encode(quadrants(), "PNG"))
    result = triton.infer("tiny", [image], outputs=wanted("rle", "labels"))
    assert [o.name for o in result.get_response().outputs] == ["rle", "labels"]
    everything = triton.infer("tiny", [image], request_id="req-9", model_version="1")
    response = everything.get_response()
    assert [o.name for o in response.outputs] == list(OUTPUTS)
    assert (response.id, response.model_version) == ("req-9", "1")


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_preprocessed_tensors_are_segmented(triton: InferenceServerClient, datatype: str) -> None:
    pixels, x = prepared_input(SIDE, datatype)
    tensor = InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    result = triton.infer("tiny", [tensor], outputs=wanted("labels", "png"))
    labels = result.as_numpy("labels")
    for i in range(2):
        np.testing.assert_array_equal(labels[i], expected_labels(pixels[i]))
        np.testing.assert_array_equal(palette_labels(result.as_numpy("png")[i]), labels[i])


# -- errors -------------------------------------------------------------------------------------
def _fp32(shape: list[int]) -> InferInput:
    return zeros_tensor(tritonclient.grpc, "input", shape, "FP32")


def _int32_image() -> InferInput:
    return zeros_tensor(tritonclient.grpc, "image", [1], "INT32")


def _sizes() -> InferInput:
    return images_input(encode(quadrants(40, 30), "PNG"), encode(quadrants(64, 48), "PNG"))


@pytest.mark.parametrize(
    ("model", "inputs", "outputs", "status", "message"),
    [
        ("nope", lambda: [images_input(b"x")], ["labels"], "NOT_FOUND", "no model named 'nope'"),
        ("tiny", lambda: [images_input(b"not an image")], ["png"], "INVALID_ARGUMENT", "image"),
        ("tiny", lambda: [_int32_image()], ["png"], "INVALID_ARGUMENT", "input 'image' is BYTES"),
        ("tiny", lambda: [_fp32([1, 3, 32, 32])], ["png"], "INVALID_ARGUMENT", "[N,3,24,24]"),
        ("tiny", lambda: [_sizes()], ["labels"], "INVALID_ARGUMENT", "different sizes"),
        ("tiny", lambda: [_sizes()], ["logits"], "INVALID_ARGUMENT", "unknown output 'logits'"),
        (
            "tiny",
            lambda: [images_input(png_declaring(3000, 3000))],  # 9 Mpx > the server's 4 Mpx
            ["png"],
            "RESOURCE_EXHAUSTED",
            "pixels",
        ),
    ],
    ids=[
        "unknown-model",
        "not-an-image",
        "wrong-datatype",
        "wrong-size",
        "sizes-differ",
        "unknown-output",
        "too-many-pixels",
    ],
)
def test_errors_reach_the_client_with_our_message(
    triton: InferenceServerClient, model: str, inputs, outputs, status: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.infer(model, inputs(), outputs=wanted(*outputs))
    assert raised.value.status() == f"StatusCode.{status}"
    assert message in raised.value.message()


def test_a_passed_deadline_is_deadline_exceeded(triton: InferenceServerClient) -> None:
    image = images_input(encode(quadrants(), "PNG"))
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("tiny", [image], outputs=wanted("png"), timeout=1)  # 1 µs
    assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_the_same_batcher_serves_both_doors(
    triton: InferenceServerClient, client: httpx.Client
) -> None:
    ok = (
        "segserve_requests_total",
        frozenset({"model": "tiny", "format": "png", "code": "200"}.items()),
    )
    bad = (
        "segserve_rejections_total",
        frozenset({"model": "tiny", "reason": "invalid_image"}.items()),
    )
    batches = ("segserve_batch_size_count", frozenset({"model": "tiny", "version": "2"}.items()))
    before = metric_samples(client)
    triton.infer("tiny", [images_input(encode(quadrants(), "PNG"))], outputs=wanted("png"))
    with pytest.raises(InferenceServerException):
        triton.infer("tiny", [images_input(b"junk")], outputs=wanted("png"))
    after = metric_samples(client)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    assert after[batches] == before[batches] + 1


def test_no_unhandled_error_on_the_way(server: Server) -> None:
    assert "Traceback" not in server.log()


# -- API keys -----------------------------------------------------------------------------------
def test_api_keys_guard_the_grpc_door(tiny_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(tiny_repo),
        "SEGSERVE_API_KEYS": "k-1,k-2",
        "SEGSERVE_GRPC_PORT": str(port),
        **SERVER_LIMITS,
    }
    with running_server(env, tmp_path / "server.log") as server:
        triton = InferenceServerClient(f"127.0.0.1:{port}")
        for headers in (None, {"authorization": "Bearer nope"}):
            with pytest.raises(InferenceServerException) as raised:
                triton.is_server_live(headers=headers)
            assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        assert triton.is_server_live(headers={"authorization": "Bearer k-2"})
        triton.close()
        # Each refusal is logged, as the HTTP door logs its own.
        wait_for(lambda: "refused gRPC ServerLive: invalid API key" in server.log())
        assert "refused gRPC ServerLive: no API key" in server.log()
