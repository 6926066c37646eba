"""The HTTP contract (docs/API.md) against a real server: formats, negotiation, headers, models,
health, metrics, every error of the table, and concurrent requests batched without mixing."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from tests.images import encoded, scene
from tests.support import (
    SERVER_LIMITS,
    Server,
    access_line,
    expected_mask,
    metric_samples,
    png_labels,
    running_server,
)

PNG, JSON, PROBLEM = "image/png", "application/json", "application/problem+json"
SIZES = {("tiny", 1): 32, ("tiny", 2): 24, ("tiny-b", 1): 16}  # model input side, see conftest
DEFAULT_SIDE = SIZES["tiny", 2]  # the default model's latest version answers by default


# -- helpers ---------------------------------------------------------------------------------------
def segment(
    client: httpx.Client,
    data: bytes,
    *,
    content_type: str = PNG,
    params: dict[str, str] | None = None,
    **kwargs: object,
) -> httpx.Response:
    headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return client.post("/segment", content=data, headers=headers, params=params, **kwargs)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert body["detail"]
    assert "Traceback" not in body["detail"]
    return body


# -- formats ---------------------------------------------------------------------------------------
def test_png_multipart_is_the_models_mask_at_image_size(client: httpx.Client) -> None:
    image = scene(1, 90, 70)
    response = client.post("/segment", files={"image": ("s.png", encoded(image), PNG)})
    assert response.status_code == 200
    assert response.headers["content-type"] == PNG
    labels = png_labels(response)
    assert labels.shape == (70, 90)
    np.testing.assert_array_equal(labels, expected_mask(image, DEFAULT_SIDE))
    assert {1, 2} <= set(np.unique(labels).tolist())  # the scene really has both classes


def test_png_palette_is_the_class_colours(client: httpx.Client) -> None:
    response = segment(client, encoded(scene(2)))
    palette = Image.open(io.BytesIO(response.content)).getpalette()
    assert palette is not None
    assert [tuple(palette[3 * i : 3 * i + 3]) for i in range(3)] == [
        (0, 0, 0),
        (128, 0, 0),
        (0, 128, 0),
    ]


def test_multipart_upload_over_a_megabyte(client: httpx.Client) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise))
    assert 1 << 20 < len(data) < int(SERVER_LIMITS["SEGSERVE_MAX_BODY_BYTES"])
    response = client.post("/segment", files={"image": ("noise.png", data, PNG)})
    assert response.status_code == 200
    np.testing.assert_array_equal(
        png_labels(response), expected_mask(Image.fromarray(noise), DEFAULT_SIDE)
    )


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "image/webp"])
def test_raw_body_in_every_declared_type(client: httpx.Client, content_type: str) -> None:
    image = scene(3)
    data = encoded(image, "WEBP", lossless=True) if content_type == "image/webp" else encoded(image)
    response = segment(client, data, content_type=content_type)
    assert response.status_code == 200
    np.testing.assert_array_equal(png_labels(response), expected_mask(image, DEFAULT_SIDE))


def test_jpeg_is_decoded_and_segmented(client: httpx.Client) -> None:
    image = scene(4, 640, 480)
    response = segment(client, encoded(image, "JPEG", quality=95), content_type="image/jpeg")
    assert response.status_code == 200
    labels = png_labels(response)
    assert labels.shape == (480, 640)
    # Lossy input and a reduced-scale decode: nearly, not exactly, the lossless answer.
    assert (labels == expected_mask(image, DEFAULT_SIDE)).mean() > 0.97


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_rle_decodes_with_pycocotools_to_the_png_mask(client: httpx.Client) -> None:
    data = encoded(scene(5, 75, 51))
    mask = png_labels(segment(client, data))
    response = segment(client, data, params={"format": "rle"})
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert (body["model"], body["version"], body["width"], body["height"]) == ("tiny", 2, 75, 51)
    assert [m["class_id"] for m in body["masks"]] == sorted(np.unique(mask).tolist())
    for entry in body["masks"]:
        rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
        decoded = coco_mask.decode(rle)
        np.testing.assert_array_equal(decoded, (mask == entry["class_id"]).astype(np.uint8))
        assert entry["area"] == int(decoded.sum()) > 0
        assert entry["label"] == ["background", "red", "green"][entry["class_id"]]
    assert sum(m["area"] for m in body["masks"]) == 75 * 51


def test_overlay_blends_class_colours_over_the_image(client: httpx.Client) -> None:
    image = scene(6, 100, 64)
    data = encoded(image)
    mask = png_labels(segment(client, data))
    pixels = np.asarray(image).astype(int)
    for alpha in ("0", "0.5", "1"):
        response = segment(client, data, params={"format": "overlay", "alpha": alpha})
        assert (response.status_code, response.headers["content-type"]) == (200, PNG)
        overlay = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
        assert overlay.shape == (64, 100, 3)
        np.testing.assert_array_equal(overlay[mask == 0], pixels[mask == 0])
        colours = np.array([(0, 0, 0), (128, 0, 0), (0, 128, 0)])[mask]
        blended = pixels * (1 - float(alpha)) + colours * float(alpha)
        assert np.abs(overlay - blended)[mask > 0].max() <= 1


# -- negotiation, models and versions --------------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json", JSON),
        ("image/png", PNG),
        ("*/*", PNG),
        ("image/*", PNG),
        ("text/html", PNG),
        ("application/json;q=0.5, image/png", PNG),
        ("image/png;q=0.2, application/json", JSON),
        ("text/html, application/json;q=0.9", JSON),
    ],
)
def test_accept_selects_the_format(client: httpx.Client, accept: str, expected: str) -> None:
    response = segment(client, encoded(scene(7)), headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == expected


def test_several_accept_headers_are_one_list(client: httpx.Client) -> None:
    # RFC 9110: "Accept: image/png;q=0.1" and "Accept: application/json" read as one list.
    headers = [("Accept", "image/png;q=0.1"), ("Accept", "application/json")]
    response = client.post(
        "/segment",
        content=encoded(scene(7)),
        headers=httpx.Headers([*headers, ("Content-Type", "image/png")]),
    )
    assert response.headers["content-type"] == JSON


def test_format_parameter_wins_over_accept(client: httpx.Client) -> None:
    response = segment(
        client, encoded(scene(8)), params={"format": "rle"}, headers={"Accept": "image/png"}
    )
    assert response.headers["content-type"] == JSON
    response = segment(
        client, encoded(scene(8)), params={"format": "png"}, headers={"Accept": "application/json"}
    )
    assert response.headers["content-type"] == PNG


@pytest.mark.parametrize(
    ("params", "model", "version"),
    [
        ({}, "tiny", 2),
        ({"version": "1"}, "tiny", 1),
        ({"model": "tiny", "version": "2"}, "tiny", 2),
        ({"model": "tiny-b"}, "tiny-b", 1),
    ],
)
def test_model_and_version_selection(
    client: httpx.Client, params: dict[str, str], model: str, version: int
) -> None:
    image = scene(9, 64, 64)
    response = segment(client, encoded(image), params=params)
    assert response.status_code == 200
    assert response.headers["x-model"] == model
    assert response.headers["x-model-version"] == str(version)
    np.testing.assert_array_equal(png_labels(response), expected_mask(image, SIZES[model, version]))


def test_response_headers(client: httpx.Client) -> None:
    response = segment(client, encoded(scene(10)), headers={"X-Request-ID": "req-42.a:b"})
    assert response.headers["x-request-id"] == "req-42.a:b"
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    assert set(timing) == {"decode", "queue", "infer", "encode"}
    assert all(float(ms) >= 0 for ms in timing.values())
    generated = segment(client, encoded(scene(10))).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    unsafe = segment(client, encoded(scene(10)), headers={"X-Request-ID": "a b\tc"})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])


def test_one_json_log_line_per_request(client: httpx.Client, server: Server) -> None:
    segment(client, encoded(scene(11)), headers={"X-Request-ID": "log-line-check"})
    access = [access_line(server, "log-line-check")]  # exactly one, waited for
    assert access[0]["path"] == "/segment"
    assert access[0] | {"latency_ms": 0} == access[0] | {
        "request_id": "log-line-check",
        "model": "tiny",
        "version": "2",
        "status": 200,
        "format": "png",
        "method": "POST",
        "latency_ms": 0,
    }
    assert access[0]["latency_ms"] > 0


# -- models, health, docs --------------------------------------------------------------------------
def test_models_lists_everything_api_md_promises(client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["default"] == "tiny"
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"tiny", "tiny-b"}
    tiny = models["tiny"]
    assert (tiny["default"], tiny["latest_version"]) == (True, 2)
    assert tiny["batching"] == {
        "max_batch_size": 8,
        "max_batch_delay_ms": 10.0,
        "max_queue": 256,
        "request_timeout_ms": 30000.0,
    }
    v1, v2 = tiny["versions"]
    assert (v1["version"], v1["output"], v2["version"], v2["output"]) == (1, "logits", 2, "labels")
    assert v1["classes"] == [
        {"id": 0, "label": "background", "color": [0, 0, 0]},
        {"id": 1, "label": "red", "color": [128, 0, 0]},
        {"id": 2, "label": "green", "color": [0, 128, 0]},
    ]
    assert v1["input"] == {
        "height": 32,
        "width": 32,
        "layout": "NCHW",
        "channels": "RGB",
        "dtype": "float32",
        "resize": "stretch",
        "max_side": 1024,
        "stride": 32,
        "tile": None,
        "overlap": 0.25,
        "scale": 1.0,
    }
    assert v2["input"]["height"] == 24
    assert v1["normalization"]["mean"] == [0, 0, 0]
    assert v1["normalization"]["std"] == [1, 1, 1]
    assert (v1["provider"], v1["sessions"]) == ("CPU", 1)
    assert (v1["training"]["architecture"], v1["training"]["val_miou"]) == ("conv1x1", 1.0)
    assert client.get("/models/tiny-b").json() == models["tiny-b"]


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_openapi_documents_parameters_bodies_and_responses(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    operation = client.get("/openapi.json").json()["paths"]["/segment"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {
        "format",
        "alpha",
        "model",
        "version",
        "resize",
        "max_side",
        "tile",
        "overlap",
        "scale",
    }
    assert all(p.get("description") for p in operation["parameters"])
    assert set(operation["requestBody"]["content"]) == {
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/gif",
        "application/octet-stream",
        "multipart/form-data",
    }
    responses = operation["responses"]
    assert set(responses["200"]["content"]) == {PNG, JSON}
    assert {"X-Model", "X-Model-Version", "Server-Timing"} <= set(responses["200"]["headers"])
    for status in ("400", "404", "413", "415", "422", "500", "503", "504"):
        assert PROBLEM in responses[status]["content"], status


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_are_exported_and_count(client: httpx.Client) -> None:
    ok = (
        "segserve_requests_total",
        frozenset({"model": "tiny", "format": "rle", "code": "200"}.items()),
    )
    bad = (
        "segserve_rejections_total",
        frozenset({"model": "tiny", "reason": "invalid_image"}.items()),
    )
    before = metric_samples(client)
    segment(client, encoded(scene(12)), params={"format": "rle"})
    segment(client, b"not an image")
    after = metric_samples(client)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    names = {name for name, _ in after}
    for name in (
        "segserve_request_duration_seconds_bucket",
        "segserve_queue_wait_seconds_count",
        "segserve_inference_duration_seconds_sum",
        "segserve_batch_size_count",
        "segserve_queue_depth",
        "segserve_in_flight_requests",
        "segserve_model_loaded",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    loaded = {dict(labels)["provider"] for name, labels in after if name == "segserve_model_loaded"}
    assert loaded == {"CPU"}


def test_concurrent_requests_each_get_their_own_answer(
    client: httpx.Client, server: Server
) -> None:
    images = [encoded(scene(100 + i, 48 + 7 * (i % 9), 40 + 5 * (i % 7))) for i in range(32)]
    alone = [png_labels(segment(client, data)) for data in images]
    batches_before = _batch_counts(client)
    limits = httpx.Limits(max_connections=32)
    with server.client(limits=limits) as shared, ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda data: segment(shared, data), images))
    for response, expected in zip(together, alone, strict=True):
        assert response.status_code == 200
        np.testing.assert_array_equal(png_labels(response), expected)
    batches, single = (
        after - before for after, before in zip(_batch_counts(client), batches_before, strict=True)
    )
    assert batches < 32  # some batches held more than one image
    assert single < batches


def test_concurrent_requests_across_models_with_a_session_pool(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """Two sessions per model, batches of at most 4, three model versions at once: every
    request still gets exactly the answer of its own model for its own image."""
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(tiny_repo),
        "SEGSERVE_SESSIONS": "2",
        "SEGSERVE_MAX_BATCH_SIZE": "4",
        "SEGSERVE_MAX_BATCH_DELAY_MS": "20",
        "SEGSERVE_BATCH_EAGER": "false",
    }
    targets = [("tiny", 1), ("tiny", 2), ("tiny-b", 1)]
    work = [(scene(200 + i, 50 + 3 * i, 60), targets[i % 3]) for i in range(36)]

    def send(client: httpx.Client, image: Image.Image, target: tuple[str, int]) -> np.ndarray:
        params = {"model": target[0], "version": str(target[1])}
        response = segment(client, encoded(image), params=params)
        assert response.status_code == 200
        assert response.headers["x-model"] == target[0]
        assert response.headers["x-model-version"] == str(target[1])
        return png_labels(response)

    with (
        running_server(env, tmp_path / "server.log") as srv,
        srv.client(limits=httpx.Limits(max_connections=36)) as shared,
        ThreadPoolExecutor(36) as pool,
    ):
        answers = list(pool.map(lambda job: send(shared, *job), work))
        sizes = [
            (dict(labels)["model"], value)
            for (name, labels), value in metric_samples(shared).items()
            if name == "segserve_batch_size_count"
        ]
    for (image, target), answer in zip(work, answers, strict=True):
        np.testing.assert_array_equal(answer, expected_mask(image, SIZES[target]))
    assert sum(value for _, value in sizes) < 36  # batched


def _batch_counts(client: httpx.Client) -> tuple[float, float]:
    """(batches run, batches of one image) for tiny v2."""
    labels = {"model": "tiny", "version": "2"}
    samples = metric_samples(client)
    count = samples[("segserve_batch_size_count", frozenset(labels.items()))]
    ones = samples[("segserve_batch_size_bucket", frozenset((labels | {"le": "1.0"}).items()))]
    return count, ones


# -- the error table -------------------------------------------------------------------------------
def _multipart(name: str, data: bytes) -> dict:
    return {"files": {name: ("x.png", data, PNG)}}


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"content": b"", "headers": {"Content-Type": PNG}},
        {"content": b"definitely not an image", "headers": {"Content-Type": PNG}},
        {"content": b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "headers": {"Content-Type": PNG}},
        {"content": encoded(scene(13))[:-200], "headers": {"Content-Type": PNG}},
        _multipart("photo", encoded(scene(13))),
        _multipart("image", b"GIF89a garbage"),
        {"content": b"--xyz\r\nbroken", "headers": {"Content-Type": "multipart/form-data"}},
    ],
    ids=["empty", "garbage", "header-only", "truncated", "wrong-part", "bad-part", "bad-multipart"],
)
def test_invalid_image_is_400(client: httpx.Client, request_kwargs: dict) -> None:
    assert_problem(client.post("/segment", **request_kwargs), 400, "invalid_image")


@pytest.mark.parametrize(
    "params", [{"model": "nope"}, {"version": "7"}, {"model": "tiny-b", "version": "2"}]
)
def test_unknown_model_or_version_is_404(client: httpx.Client, params: dict[str, str]) -> None:
    assert_problem(segment(client, encoded(scene(14)), params=params), 404, "model_not_found")


def test_unknown_model_description_is_404(client: httpx.Client) -> None:
    assert_problem(client.get("/models/nope"), 404, "model_not_found")


def test_too_large_is_413_declared_streamed_or_pixels(client: httpx.Client) -> None:
    limit = int(SERVER_LIMITS["SEGSERVE_MAX_BODY_BYTES"])
    assert_problem(segment(client, b"\0" * (limit + 1)), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    assert_problem(
        client.post("/segment", content=chunks(), headers={"Content-Type": PNG}),
        413,
        "payload_too_large",
    )
    bomb = encoded(Image.new("L", (2100, 2000)))  # 4.2 Mpx > 4 Mpx, a few kB on the wire
    assert len(bomb) < limit
    assert_problem(segment(client, bomb), 413, "payload_too_large")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/json", "application/x-www-form-urlencoded", "image/svg+xml"],
)
def test_unsupported_media_type_is_415(client: httpx.Client, content_type: str) -> None:
    response = segment(client, encoded(scene(15)), content_type=content_type)
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "params",
    [
        {"format": "jpeg"},
        {"alpha": "1.5"},
        {"alpha": "-0.1"},
        {"alpha": "lots"},
        {"version": "0"},
        {"version": "latest"},
    ],
)
def test_bad_parameter_is_422(client: httpx.Client, params: dict[str, str]) -> None:
    assert_problem(segment(client, encoded(scene(16)), params=params), 422, "invalid_parameter")


def test_bad_requests_leave_the_server_healthy(client: httpx.Client) -> None:
    image = scene(17)
    for _ in range(3):
        segment(client, b"junk")
        segment(client, encoded(image), content_type="text/plain")
    response = segment(client, encoded(image))
    assert client.get("/readyz").status_code == 200
    np.testing.assert_array_equal(png_labels(response), expected_mask(image, DEFAULT_SIDE))


def test_full_queue_is_503_and_a_late_request_504(tiny_repo: Path, tmp_path: Path) -> None:
    """A long batch window keeps the first two requests queued: the others find the queue full
    (503 + Retry-After), and the queued ones pass their 150 ms deadline before inference (504)."""
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(tiny_repo),
        "SEGSERVE_MAX_QUEUE": "2",
        "SEGSERVE_MAX_BATCH_SIZE": "64",
        "SEGSERVE_MAX_BATCH_DELAY_MS": "1000",
        "SEGSERVE_BATCH_EAGER": "false",
        "SEGSERVE_REQUEST_TIMEOUT_MS": "150",
    }
    data = encoded(scene(18))
    with (
        running_server(env, tmp_path / "server.log") as srv,
        srv.client() as c,
        ThreadPoolExecutor(6) as pool,
    ):
        responses = list(pool.map(lambda _: segment(c, data), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {503, 504}, codes
        assert codes.count(504) <= 2, codes
        for response in responses:
            if response.status_code == 503:
                assert_problem(response, 503, "overloaded")
                assert int(response.headers["retry-after"]) >= 1
            else:
                assert_problem(response, 504, "deadline_exceeded")
        assert c.get("/readyz").status_code == 200
