"""Hostile and malformed requests against a real server: each gets its documented status and
problem+json ``code`` quickly, none allocates a bomb-sized image, none leaks internals, and
afterwards a valid request gets exactly the answer it got before.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.images import corrupt_png_crc, encode, jpeg_declaring, png_declaring, quadrants
from tests.support import Server, running_server, write_tiny_model

BODY_LIMIT = 1_000_000
# A 50000x50000 RGB image decoded would need 7.5 GB: any bomb that got decoded shows up here.
RSS_HEADROOM_MB = 200
LEAKS = ("Traceback", "/work", ".py", 'File "')


def vm_kib(pid: int, field_name: str) -> int:
    """VmRSS / VmHWM (peak RSS) of ``pid`` in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


@dataclass
class Baseline:
    server: Server
    client: httpx.Client
    image: bytes
    answer: bytes  # the valid request's answer before any hostile one
    hwm_kib: int  # the server's peak RSS after that valid request


def _valid(client: httpx.Client, image: bytes) -> httpx.Response:
    return client.post("/segment", content=image, headers={"Content-Type": "image/png"})


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baseline]:
    root = tmp_path_factory.mktemp("hostile")
    write_tiny_model(root / "models")
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(root / "models"),
        "SEGSERVE_MAX_BODY_BYTES": str(BODY_LIMIT),
    }
    with running_server(env, root / "server.log") as server, server.client() as client:
        image = encode(quadrants(96, 64), "PNG")
        first = _valid(client, image)
        assert first.status_code == 200, first.text
        yield Baseline(server, client, image, first.content, vm_kib(server.process.pid, "VmHWM"))


def _jpeg() -> bytes:
    return encode(quadrants(96, 64), "JPEG", quality=90)


def _png() -> bytes:
    return encode(quadrants(96, 64), "PNG")


def _png_corrupt_idat() -> bytes:
    """A PNG whose compressed pixel data is garbage (the chunk CRC recomputed, so only the
    decoder can notice)."""
    data = bytearray(_png())
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    payload = bytes(b ^ 0x5A for b in data[at + 4 : at + 4 + length])
    data[at + 4 : at + 4 + length] = payload
    struct.pack_into(">I", data, at + 4 + length, zlib.crc32(b"IDAT" + payload))
    return bytes(data)


def _multipart(field_name: str, payload: bytes) -> tuple[bytes, str]:
    request = httpx.Request(
        "POST", "http://x/", files={field_name: ("a.png", payload, "image/png")}
    )
    return request.read(), request.headers["content-type"]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"\0" * min(size, total - start)


_no_image_body, _no_image_type = _multipart("file", b"not the image part")
_bomb_body, _bomb_type = _multipart("image", png_declaring(50_000, 50_000))

# (id, request keyword arguments for client.post("/segment", ...), status, code)
CASES = [
    (
        "empty-body",
        {"content": b"", "headers": {"Content-Type": "image/png"}},
        400,
        "invalid_image",
    ),
    ("empty-body-no-type", {"content": b""}, 400, "invalid_image"),
    (
        "random-bytes",
        {"content": os.urandom(4096), "headers": {"Content-Type": "application/octet-stream"}},
        400,
        "invalid_image",
    ),
    (
        "random-bytes-as-jpeg",
        {"content": os.urandom(4096), "headers": {"Content-Type": "image/jpeg"}},
        400,
        "invalid_image",
    ),
    (
        "truncated-jpeg",
        {"content": _jpeg()[: len(_jpeg()) // 2], "headers": {"Content-Type": "image/jpeg"}},
        400,
        "invalid_image",
    ),
    (
        "png-corrupt-ihdr-crc",
        {"content": corrupt_png_crc(_png()), "headers": {"Content-Type": "image/png"}},
        400,
        "invalid_image",
    ),
    (
        "png-corrupt-idat",
        {"content": _png_corrupt_idat(), "headers": {"Content-Type": "image/png"}},
        400,
        "invalid_image",
    ),
    (
        "png-bomb-50000",
        {"content": png_declaring(50_000, 50_000), "headers": {"Content-Type": "image/png"}},
        413,
        "payload_too_large",
    ),
    (
        "jpeg-bomb-65500",
        {"content": jpeg_declaring(65_500, 65_500), "headers": {"Content-Type": "image/jpeg"}},
        413,
        "payload_too_large",
    ),
    (
        "png-bomb-in-multipart",
        {"content": _bomb_body, "headers": {"Content-Type": _bomb_type}},
        413,
        "payload_too_large",
    ),
    (
        "body-over-limit",
        {"content": b"\0" * (BODY_LIMIT + 1), "headers": {"Content-Type": "image/png"}},
        413,
        "payload_too_large",
    ),
    (
        "chunked-body-over-limit",
        {"content": _chunks(4 * BODY_LIMIT), "headers": {"Content-Type": "image/png"}},
        413,
        "payload_too_large",
    ),
    (
        "text-plain",
        {"content": _png(), "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "json-body",
        {"content": b'{"image": "x"}', "headers": {"Content-Type": "application/json"}},
        415,
        "unsupported_media_type",
    ),
    (
        "garbage-content-type",
        {"content": _png(), "headers": {"Content-Type": ";;==;x"}},
        415,
        "unsupported_media_type",
    ),
    (
        "svg",
        {
            "content": b'<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>',
            "headers": {"Content-Type": "image/svg+xml"},
        },
        415,
        "unsupported_media_type",
    ),
    (
        "multipart-without-image",
        {"content": _no_image_body, "headers": {"Content-Type": _no_image_type}},
        400,
        "invalid_image",
    ),
    (
        "multipart-bad-boundary",
        {
            "content": b"--nope\r\n\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        400,
        "invalid_image",
    ),
    (
        "unknown-model",
        {"content": _png(), "params": {"model": "nope"}, "headers": {"Content-Type": "image/png"}},
        404,
        "model_not_found",
    ),
    (
        "unknown-version",
        {"content": _png(), "params": {"version": "99"}, "headers": {"Content-Type": "image/png"}},
        404,
        "model_not_found",
    ),
    (
        "version-not-a-number",
        {
            "content": _png(),
            "params": {"version": "latest!"},
            "headers": {"Content-Type": "image/png"},
        },
        422,
        "invalid_parameter",
    ),
    (
        "version-zero",
        {"content": _png(), "params": {"version": "0"}, "headers": {"Content-Type": "image/png"}},
        422,
        "invalid_parameter",
    ),
    (
        "unknown-format",
        {"content": _png(), "params": {"format": "jpeg"}, "headers": {"Content-Type": "image/png"}},
        422,
        "invalid_parameter",
    ),
    (
        "alpha-above-1",
        {
            "content": _png(),
            "params": {"format": "overlay", "alpha": "2"},
            "headers": {"Content-Type": "image/png"},
        },
        422,
        "invalid_parameter",
    ),
    (
        "alpha-nan",
        {
            "content": _png(),
            "params": {"format": "overlay", "alpha": "nan"},
            "headers": {"Content-Type": "image/png"},
        },
        422,
        "invalid_parameter",
    ),
    (
        "alpha-not-a-number",
        {"content": _png(), "params": {"alpha": "half"}, "headers": {"Content-Type": "image/png"}},
        422,
        "invalid_parameter",
    ),
    (
        "long-model-name",
        {
            "content": _png(),
            "params": {"model": "m" * 8000},
            "headers": {"Content-Type": "image/png"},
        },
        404,
        "model_not_found",
    ),
    (
        "long-format",
        {
            "content": _png(),
            "params": {"format": "f" * 8000},
            "headers": {"Content-Type": "image/png"},
        },
        422,
        "invalid_parameter",
    ),
]


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert {"type", "title", "detail"} <= problem.keys()
    assert response.headers.get("x-request-id")
    assert_no_leak(response)


def assert_no_leak(response: httpx.Response) -> None:
    text = response.text
    for leak in LEAKS:
        assert leak not in text, f"the answer leaks {leak!r}: {text[:500]}"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"), [pytest.param(k, s, c, id=i) for i, k, s, c in CASES]
)
def test_hostile_request_gets_its_problem_quickly(
    baseline: Baseline, kwargs: dict, status: int, code: str, request: pytest.FixtureRequest
) -> None:
    started = time.perf_counter()
    response = baseline.client.post("/segment", **kwargs)
    elapsed = time.perf_counter() - started
    assert_problem(response, status, code)
    # A bomb refused from its header costs microseconds; decoding one would take many seconds.
    assert elapsed < 1.0, f"{request.node.callspec.id} took {elapsed:.2f} s"


def test_missing_content_type_is_sniffed(baseline: Baseline) -> None:
    response = baseline.client.post("/segment", content=baseline.image)
    assert response.status_code == 200
    assert response.content == baseline.answer


def test_harmless_oversized_query_and_headers_are_ignored(baseline: Baseline) -> None:
    """An unknown 8 KB parameter and a 64 KB header reach the app and change nothing."""
    response = baseline.client.post(
        "/segment",
        content=baseline.image,
        params={"junk": "j" * 8000},
        headers={
            "Content-Type": "image/png",
            "X-Junk": "h" * 65_536,
            "Accept": ";;;q=nonsense,,",
            "X-Request-ID": "r" * 10_000,
        },
    )
    assert response.status_code == 200
    assert response.content == baseline.answer
    # An id that long is not echoed into headers and logs: a fresh one is issued instead.
    assert len(response.headers["x-request-id"]) <= 128


def test_request_line_and_headers_beyond_the_parser_are_refused_without_harm(
    baseline: Baseline,
) -> None:
    """Past what the HTTP parser takes, the server answers 4xx (before the app: plain text) or
    closes the connection; either way it stays up and small."""
    host, port = baseline.server.base_url.removeprefix("http://").split(":")
    for request_line in (
        f"GET /healthz?q={'a' * 200_000} HTTP/1.1",
        f"GET /healthz HTTP/1.1\r\nX-Big: {'b' * 4_000_000}",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            try:
                sock.sendall(f"{request_line}\r\nHost: x\r\n\r\n".encode())
                reply = sock.recv(64)
            except (ConnectionResetError, BrokenPipeError):
                reply = b""
        status = int(reply.split()[1]) if reply.startswith(b"HTTP/1.1") else None
        assert status is None or status == 200 or 400 <= status < 500, reply
    assert baseline.client.get("/healthz").status_code == 200


def test_routing_errors_are_problems_without_internals(baseline: Baseline) -> None:
    client = baseline.client
    for response in (
        client.get("/nope"),
        client.get("/segment"),
        client.delete("/models"),
        client.get("/models/nope"),
        client.get("/../../etc/passwd"),
        client.post("/healthz"),
    ):
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == "application/problem+json"
        assert_no_leak(response)


def test_valid_request_gets_the_same_answer_and_memory_stayed_bounded(baseline: Baseline) -> None:
    """Runs last in this module: after every hostile request above."""
    after = _valid(baseline.client, baseline.image)
    assert after.status_code == 200
    assert after.content == baseline.answer
    mask = np.asarray(Image.open(io.BytesIO(after.content)))
    assert mask.shape == (64, 96)
    pid = baseline.server.process.pid
    grown_mb = (vm_kib(pid, "VmHWM") - baseline.hwm_kib) / 1024
    assert grown_mb < RSS_HEADROOM_MB, f"peak RSS grew by {grown_mb:.0f} MB"
    assert baseline.server.process.poll() is None
