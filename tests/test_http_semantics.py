"""HTTP semantics a client relies on (RFC 9110), against a real server: no redirect of a
trailing slash, HEAD wherever GET is served, an access-log line that names every refusal, and a
port in use that ends the process with its documented status and the setting to change."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.images import encoded, scene
from tests.support import ROOT, Server, access_line

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(("method", "path"), [("POST", "/segment/"), ("GET", "/models/")])
def test_a_trailing_slash_is_a_404_naming_the_path_without_it(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path, content=encoded(scene(1)))
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == "not_found"
    assert f"use {path.rstrip('/')}" in body["detail"]


def test_an_unknown_path_is_a_plain_404(client: httpx.Client) -> None:
    body = client.get("/nowhere").json()
    assert (body["status"], body["code"]) == (404, "not_found")
    assert "trailing" not in body["detail"]


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/models", "/models/tiny", "/metrics", "/", "/docs"]
)
def test_head_answers_like_get_without_a_body(client: httpx.Client, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert (head.status_code, get.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the exposition changes between the two requests
        assert head.headers["content-length"] == str(len(get.content))


def test_head_where_get_is_not_served_is_405(client: httpx.Client) -> None:
    response = client.head("/segment")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "expected"),
    [
        (
            "POST",
            "/segment",
            {"format": "nope", "model": "tiny", "version": "1"},
            422,
            {"error": "invalid_parameter", "model": "tiny", "version": "1", "format": None},
        ),
        (
            "POST",
            "/segment",
            {"alpha": "7", "format": "rle"},
            422,
            {"error": "invalid_parameter", "model": "tiny", "version": "2", "format": "rle"},
        ),
        (  # a version that is not one keeps the model named beside it
            "POST",
            "/segment",
            {"model": "tiny", "version": "abc", "format": "rle"},
            422,
            {"error": "invalid_parameter", "model": "tiny", "version": None, "format": "rle"},
        ),
        (  # an empty format is no format, not the Accept header's
            "POST",
            "/segment",
            {"format": "", "model": "tiny"},
            422,
            {"error": "invalid_parameter", "model": "tiny", "format": None},
        ),
        ("GET", "/segment", {}, 405, {"error": "method_not_allowed"}),
        ("POST", "/segment/", {}, 404, {"error": "not_found"}),
        ("GET", "/nowhere", {}, 404, {"error": "not_found"}),
    ],
)
def test_the_access_log_names_every_refusal(
    client: httpx.Client,
    server: Server,
    method: str,
    path: str,
    params: dict[str, str],
    status: int,
    expected: dict[str, str | None],
) -> None:
    request_id = f"refusal-{method}-{status}-{'-'.join(f'{k}{v}' for k, v in params.items())}"
    request_id = f"{request_id}-{path.count('/')}"
    response = client.request(
        method,
        path,
        params=params,
        content=encoded(scene(1)),
        headers={"Content-Type": "image/png", "X-Request-ID": request_id},
    )
    assert response.status_code == status
    line = access_line(server, request_id)
    assert line["status"] == status
    assert {key: line[key] for key in expected} == expected


@pytest.mark.parametrize("setting", ["SEGSERVE_PORT", "SEGSERVE_GRPC_PORT"])
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_exits_3_naming_its_setting(
    tmp_path: Path, setting: str, processes: str
) -> None:
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))  # a port nobody listens on, closed before the server starts
        port, other = taken.getsockname()[1], free.getsockname()[1]
        free.close()
        ports = {"SEGSERVE_PORT": other, "SEGSERVE_GRPC_PORT": other} | {setting: port}
        run = subprocess.run(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(ROOT),
                "SEGSERVE_HOST": "127.0.0.1",
                "SEGSERVE_PROCESSES": processes,
                "SEGSERVE_MODEL_REPOSITORY": str(ROOT / "models"),
                **{name: str(value) for name, value in ports.items()},
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 3, run.stderr
    assert setting in run.stderr
    assert f"127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
