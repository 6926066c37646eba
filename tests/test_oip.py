"""The Open Inference Protocol (docs/API.md) against a real server, with Triton's own client:
metadata, health, config, BYTES images and FP32/FP16 tensors in, labels/png/rle out as JSON or
binary data, answers equal to /segment's, errors as the protocol's, and hostile bodies refused."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http
from PIL import Image
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from tests.images import encode, png_declaring, quadrants
from tests.support import (
    Server,
    access_line,
    expected_labels,
    expected_scores,
    images_tensor,
    metric_samples,
    oip_client,
    palette_labels,
    prepared_input,
    segment_answer,
    zeros_tensor,
)

SIDE = 24  # tiny v2, the default model's latest version (tests/conftest.py)
OUTPUTS = ("labels", "png", "rle")


@pytest.fixture
def triton(server: Server) -> Iterator[InferenceServerClient]:
    client = oip_client(server)
    yield client
    client.close()


def images_input(*images: bytes) -> InferInput:
    return images_tensor(tritonclient.http, *images)


def wanted(*names: str, binary: bool = True) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(name, binary_data=binary) for name in names]


def oip_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]
    return str(body["error"])


# -- metadata, health, config -------------------------------------------------------------------
def test_server_metadata_and_health(triton: InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "segserve"
    assert metadata["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
    ]


def test_health_probes_log_at_debug_as_segserves_own(client: httpx.Client, server: Server) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready"):
        headers = {"X-Request-ID": "probe-" + path.replace("/", "-")}
        assert client.get(path, headers=headers).status_code == 200
    assert client.get("/v2", headers={"X-Request-ID": "probe-not"}).status_code == 200
    access_line(server, "probe-not")  # logged at info, so written by now; the probes are not
    assert "probe--v2" not in server.log()


def test_model_metadata_describes_inputs_and_outputs(triton: InferenceServerClient) -> None:
    metadata = triton.get_model_metadata("tiny")
    assert (metadata["name"], metadata["versions"]) == ("tiny", ["1", "2"])
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, SIDE, SIDE]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == [*OUTPUTS, "scores"]
    assert metadata["outputs"][-1] == {
        "name": "scores",
        "datatype": "FP32",
        "shape": [-1, 3, SIDE, SIDE],
    }
    v1 = triton.get_model_metadata("tiny", "1")
    assert v1["inputs"][1]["shape"] == [-1, 3, 32, 32]
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny-b", "1")
    assert not triton.is_model_ready("tiny", "9")


def test_model_config_is_tritons(triton: InferenceServerClient) -> None:
    config = triton.get_model_config("tiny")
    assert (config["name"], config["platform"], config["max_batch_size"]) == (
        "tiny",
        "onnxruntime_onnx",
        8,
    )
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["input"]["dims"] == [3, SIDE, SIDE]
    assert inputs["image"]["data_type"] == "TYPE_STRING"
    outputs = {o["name"]: o for o in config["output"]}
    assert list(outputs) == [*OUTPUTS, "scores"]  # as the metadata lists them
    assert outputs["scores"]["dims"] == [3, SIDE, SIDE]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256


# -- infer --------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary-outputs", "json-outputs"])
def test_bytes_images_answer_as_segment_does(
    triton: InferenceServerClient, client: httpx.Client, binary: bool
) -> None:
    images = [encode(quadrants(64, 48), "PNG"), encode(quadrants(64, 48).rotate(180), "PNG")]
    outputs = [*wanted("labels", "rle", binary=binary), *wanted("png")]
    # Images go as binary data: tritonclient sends JSON BYTES as text, which a PNG is not.
    result = triton.infer("tiny", [images_input(*images)], outputs=outputs)
    assert result.get_response()["model_version"] == "2"
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
        rle = rles[i].decode() if isinstance(rles[i], bytes) else rles[i]
        assert json.loads(rle) == segment_answer(client, data, "rle").json()
    assert {1, 2} <= set(np.unique(labels).tolist())  # the image really has both classes


def test_default_outputs_are_all_three_as_binary(triton: InferenceServerClient) -> None:
    result = triton.infer("tiny", [images_input(encode(quadrants(), "PNG"))])  # no outputs named
    assert [o["name"] for o in result.get_response()["outputs"]] == list(OUTPUTS)
    assert result.as_numpy("labels").shape == (1, 48, 64)


def test_an_empty_outputs_list_asks_for_all_of_them(client: httpx.Client) -> None:
    # As a hand-written client may send it: "outputs": [] reads as no outputs named, as gRPC's
    # empty repeated field does. The image goes as binary data (a 4-byte length, the bytes).
    data = encode(quadrants(), "PNG")
    element = len(data).to_bytes(4, "little") + data
    image = {"name": "image", "shape": [1], "datatype": "BYTES"}
    header = json.dumps(
        {"inputs": [{**image, "parameters": {"binary_data_size": len(element)}}], "outputs": []}
    ).encode()
    response = client.post(
        "/v2/models/tiny/infer",
        content=header + element,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert list(outputs) == ["labels", "rle"]  # png goes only as binary data, not asked for
    assert outputs["labels"]["shape"] == [1, 48, 64]


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_tensors_are_segmented(
    triton: InferenceServerClient, datatype: str, binary: bool
) -> None:
    pixels, x = prepared_input(SIDE, datatype)
    tensor = InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [*wanted("labels", binary=binary), *wanted("png")]
    result = triton.infer("tiny", [tensor], outputs=outputs)
    labels = result.as_numpy("labels")
    for i in range(2):
        np.testing.assert_array_equal(labels[i], expected_labels(pixels[i]))
        np.testing.assert_array_equal(palette_labels(result.as_numpy("png")[i]), labels[i])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_scores_come_only_when_asked_and_agree_with_the_labels(
    triton: InferenceServerClient, binary: bool
) -> None:
    pixels, x = prepared_input(32, "FP32")  # tiny v1: logits at 32 x 32
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [*wanted("scores", binary=binary), *wanted("labels")]
    result = triton.infer("tiny", [tensor], model_version="1", outputs=outputs)
    scores = result.as_numpy("scores")
    assert scores.shape == (2, 3, 32, 32)
    assert scores.dtype == np.float32
    for i in range(2):
        np.testing.assert_allclose(scores[i], expected_scores(pixels[i]), atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("labels"), scores.argmax(axis=1))
    image = images_input(encode(quadrants(40, 30), "PNG"))
    by_image = triton.infer("tiny", [image], outputs=wanted("scores", "png"))
    one_hot = by_image.as_numpy("scores")  # tiny v2 outputs labels: its scores are one-hot
    assert one_hot.shape == (1, 3, SIDE, SIDE)  # the model's input size
    assert set(np.unique(one_hot)) <= {0.0, 1.0}
    assert (one_hot.sum(axis=1) == 1).all()
    assert triton.infer("tiny", [image]).as_numpy("scores") is None  # not a default output


def test_images_of_different_sizes(triton: InferenceServerClient) -> None:
    small, large = encode(quadrants(40, 30), "PNG"), encode(quadrants(64, 48), "PNG")
    result = triton.infer("tiny", [images_input(small, large)], outputs=wanted("png"))
    sizes = [Image.open(io.BytesIO(png)).size for png in result.as_numpy("png")]
    assert sizes == [(40, 30), (64, 48)]
    with pytest.raises(InferenceServerException, match="different sizes") as raised:
        triton.infer("tiny", [images_input(small, large)], outputs=wanted("labels"))
    assert raised.value.status() == "400"


def test_request_id_version_and_timeout_parameter(triton: InferenceServerClient) -> None:
    result = triton.infer(
        "tiny",
        [images_input(encode(quadrants(), "PNG"))],
        model_version="1",
        request_id="req-7",
        outputs=wanted("labels"),
        timeout=10_000_000,
    )
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (
        "req-7",
        "tiny",
        "1",
    )


# -- errors -------------------------------------------------------------------------------------
def _fp32(shape: list[int]) -> InferInput:
    return zeros_tensor(tritonclient.http, "input", shape, "FP32")


def _int32_image() -> InferInput:
    return zeros_tensor(tritonclient.http, "image", [1], "INT32")


@pytest.mark.parametrize(
    ("model", "inputs", "status", "message"),
    [
        ("nope", lambda: [images_input(b"x")], "404", "no model named 'nope'"),
        ("tiny", lambda: [images_input(b"not an image")], "400", "image"),
        ("tiny", lambda: [_int32_image()], "400", "input 'image' is BYTES"),
        ("tiny", lambda: [_fp32([1, 3, 32, 32])], "400", f"[N,3,{SIDE},{SIDE}]"),
        ("tiny", lambda: [_fp32([1, 3, SIDE])], "400", "input 'input' is FP32 or FP16"),
    ],
    ids=["unknown-model", "not-an-image", "wrong-datatype", "wrong-size", "wrong-rank"],
)
def test_errors_reach_the_client_with_our_message(
    triton: InferenceServerClient, model: str, inputs, status: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.infer(model, inputs(), outputs=wanted("labels"))
    assert raised.value.status() == status
    assert message in raised.value.message()


def test_unknown_output_and_png_as_json_are_400(triton: InferenceServerClient) -> None:
    image = images_input(encode(quadrants(), "PNG"))
    with pytest.raises(InferenceServerException, match="unknown output 'logits'"):
        triton.infer("tiny", [image], outputs=wanted("logits"))
    with pytest.raises(InferenceServerException, match="binary_data"):
        triton.infer("tiny", [image], outputs=wanted("png", binary=False))


def _raw(header: dict, binary: bytes = b"", length: str | None = None) -> dict:
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": length or str(len(head))} if binary else {}
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    return {"content": head + binary, "headers": headers}


_IMAGE = {"name": "image", "shape": [1], "datatype": "BYTES"}
HOSTILE = {
    "not-json": {"content": b'{"inputs": [', "headers": {}},
    "json-not-an-object": {"content": b"[1, 2, 3]", "headers": {}},
    "no-inputs": _raw({"inputs": []}),
    "header-length-not-a-number": _raw({"inputs": [_IMAGE]}, b"\0" * 8, length="12abc"),
    "header-length-past-the-body": _raw({"inputs": [_IMAGE]}, b"\0" * 8, length="100000"),
    "header-length-zero": _raw({"inputs": [_IMAGE]}, b"\0" * 8, length="0"),
    "binary-size-past-the-body": _raw(
        {"inputs": [{**_IMAGE, "parameters": {"binary_data_size": 2**62}}]}, b"\0" * 8
    ),
    "binary-size-negative": _raw(
        {"inputs": [{**_IMAGE, "parameters": {"binary_data_size": -4}}]}, b"\0" * 8
    ),
    "bytes-element-longer-than-the-data": _raw(
        {"inputs": [{**_IMAGE, "parameters": {"binary_data_size": 8}}]},
        (2**31).to_bytes(4, "little") + b"abcd",
    ),
    "bytes-left-over": _raw(
        {"inputs": [{**_IMAGE, "parameters": {"binary_data_size": 4}}]}, b"\0" * 12
    ),
    "huge-shape": _raw(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2**40, 3, SIDE, SIDE],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        },
        b"\0" * 16,
    ),
    "shape-does-not-match-data": _raw(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, SIDE, SIDE],
                    "datatype": "FP32",
                    "data": [0.5] * 7,
                }
            ]
        }
    ),
    "strings-as-fp32": _raw(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, SIDE, SIDE],
                    "datatype": "FP32",
                    "data": ["a"] * (3 * SIDE * SIDE),
                }
            ]
        }
    ),
    "negative-dimension": _raw({"inputs": [{**_IMAGE, "shape": [-1], "data": ["x"]}]}),
    "no-data": _raw({"inputs": [_IMAGE]}),
    "two-inputs": _raw({"inputs": [{**_IMAGE, "data": ["x"]}, {**_IMAGE, "data": ["y"]}]}),
    "deeply-nested-data": {
        "content": b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}]}",
        "headers": {},
    },
}


@pytest.mark.parametrize("request_kwargs", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bodies_are_400(client: httpx.Client, request_kwargs: dict) -> None:
    response = client.post("/v2/models/tiny/infer", **request_kwargs)
    oip_error(response, 400)


def test_oip_paths_answer_the_protocols_errors(client: httpx.Client) -> None:
    assert "no model named" in oip_error(client.get("/v2/models/nope"), 404)
    assert "version" in oip_error(client.get("/v2/models/tiny/versions/x"), 404)
    oip_error(client.get("/v2/nowhere"), 404)
    oip_error(client.get("/v2/models/tiny/infer"), 405)
    too_big = png_declaring(3000, 3000)  # 9 Mpx > the test server's 4 Mpx
    body = _raw(
        {"inputs": [{**_IMAGE, "parameters": {"binary_data_size": len(too_big) + 4}}]},
        len(too_big).to_bytes(4, "little") + too_big,
    )
    assert "pixels" in oip_error(client.post("/v2/models/tiny/infer", **body), 413)


def test_binary_answer_carries_the_header_length(client: httpx.Client) -> None:
    data = encode(quadrants(), "PNG")
    body = _raw(
        {
            "inputs": [{**_IMAGE, "parameters": {"binary_data_size": len(data) + 4}}],
            "outputs": [{"name": "png", "parameters": {"binary_data": True}}],
        },
        len(data).to_bytes(4, "little") + data,
    )
    response = client.post("/v2/models/tiny/infer", **body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:length])
    (png,) = head["outputs"]
    assert (png["name"], png["datatype"], png["shape"]) == ("png", "BYTES", [1])
    binary = response.content[length:]
    assert len(binary) == png["parameters"]["binary_data_size"]
    assert binary[4:] == segment_answer(client, data, "png").content


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_count_oip_requests(triton: InferenceServerClient, client: httpx.Client) -> None:
    ok = (
        "segserve_requests_total",
        frozenset({"model": "tiny", "format": "labels+png", "code": "200"}.items()),
    )
    bad = (
        "segserve_rejections_total",
        frozenset({"model": "tiny", "reason": "invalid_image"}.items()),
    )
    before = metric_samples(client)
    triton.infer(
        "tiny", [images_input(encode(quadrants(), "PNG"))], outputs=wanted("png", "labels")
    )
    with pytest.raises(InferenceServerException):
        triton.infer("tiny", [images_input(b"junk")], outputs=wanted("labels"))
    after = metric_samples(client)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1


def test_the_images_of_one_request_are_batched(
    triton: InferenceServerClient, client: httpx.Client
) -> None:
    key = ("segserve_batch_size_count", frozenset({"model": "tiny", "version": "2"}.items()))
    before = metric_samples(client)[key]
    images = [encode(quadrants(40 + i, 30), "PNG") for i in range(8)]
    result = triton.infer("tiny", [images_input(*images)], outputs=wanted("png"))
    assert len(result.as_numpy("png")) == 8
    assert metric_samples(client)[key] - before < 8  # not one batch per image


def test_no_unhandled_error_on_the_way(server: Server) -> None:
    assert "Traceback" not in server.log()
