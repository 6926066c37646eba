"""The process: graceful drain on SIGTERM, and start-up failures that exit non-zero, clearly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.images import encoded, scene
from tests.support import (
    HOLDING,
    Server,
    expected_mask,
    png_labels,
    queue_depth,
    start_server,
    tiny_card,
    tiny_model,
    wait_for,
    write_tiny_model,
)


@pytest.mark.parametrize("drain_delay_s", ["0", "1.0"])
def test_sigterm_finishes_queued_requests_and_exits_0(tmp_path: Path, drain_delay_s: str) -> None:
    write_tiny_model(tmp_path / "models", "tiny", 1, size=32)
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(tmp_path / "models"),
        "SEGSERVE_DRAIN_DELAY_S": drain_delay_s,
        **HOLDING,
    }
    server = start_server(env, tmp_path / "server.log")
    images = [scene(40 + i) for i in range(4)]
    try:
        with server.client() as client, ThreadPoolExecutor(4) as pool:
            pending = [
                pool.submit(
                    client.post,
                    "/segment",
                    content=encoded(image),
                    headers={"Content-Type": "image/png"},
                )
                for image in images
            ]
            wait_for(lambda: queue_depth(server) == 4)
            server.process.send_signal(signal.SIGTERM)
            if drain_delay_s != "0":
                # Still listening during the delay, but no longer ready.
                response = httpx.get(f"{server.base_url}/readyz", timeout=5)
                assert response.status_code == 503
                assert response.json()["code"] == "not_ready"
            responses = [p.result(timeout=30) for p in pending]
        for response, image in zip(responses, images, strict=True):
            assert response.status_code == 200
            assert (png_labels(response) == expected_mask(image, 32)).all()
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    log = [json.loads(line) for line in server.log().splitlines()]
    assert any("draining" in line["message"] for line in log)


FAILURES = {
    "missing repository": (lambda root: root / "nowhere", "does not exist"),
    "empty repository": (lambda root: root, "no models in"),
    "corrupt model": (lambda root: _corrupt(root), "cannot load"),
    "model without card": (lambda root: _without_card(root), "segserve.card"),
    "cuda on a cpu build": (lambda root: _good(root), "no CUDAExecutionProvider"),
}


def _good(root: Path) -> Path:
    write_tiny_model(root, "tiny", 1, size=8)
    return root


def _corrupt(root: Path) -> Path:
    path = write_tiny_model(root, "tiny", 1, size=8)
    path.write_bytes(path.read_bytes()[:100])
    return root


def _without_card(root: Path) -> Path:
    model = tiny_model(tiny_card(size=8))
    del model.metadata_props[:]
    (root / "bare" / "1").mkdir(parents=True)
    (root / "bare" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    return root


@pytest.mark.parametrize("case", list(FAILURES))
def test_startup_failure_exits_non_zero_with_a_clear_message(tmp_path: Path, case: str) -> None:
    make_repo, message = FAILURES[case]
    root = tmp_path / "models"
    root.mkdir()
    env = {"SEGSERVE_MODEL_REPOSITORY": str(make_repo(root))}
    if case == "cuda on a cpu build":
        env["SEGSERVE_PROVIDER"] = "cuda"
    server = start_server(env, tmp_path / "server.log", wait_ready=False)
    try:
        code = server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"server did not exit:\n{server.log()}")
    assert code == 1
    errors = [
        json.loads(line)
        for line in server.log().splitlines()
        if json.loads(line)["level"] == "error"
    ]
    assert any(message in e["message"] for e in errors), server.log()
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("SEGSERVE_SESSIONS", "0", "greater than or equal to 1"),
        ("SEGSERVE_REQUEST_TIMEOUT_MS", "inf", "finite number"),  # no endless timeout
        ("SEGSERVE_DRAIN_DELAY_S", "infinity", "finite number"),  # no drain that never ends
        ("SEGSERVE_PROVIDER", "gpu", "'auto', 'cpu', 'cuda' or 'tensorrt'"),
    ],
)
def test_invalid_settings_exit_2_with_a_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str, reason: str
) -> None:
    server = start_server({variable: value}, tmp_path / "server.log", wait_ready=False)
    assert server.process.wait(timeout=30) == 2
    (line,) = [json.loads(text) for text in server.log().splitlines()]
    assert line["level"] == "error"
    assert line["message"].startswith(f"invalid setting {variable}: ")
    assert reason in line["message"]


def test_explicit_model_control_takes_one_process(tmp_path: Path) -> None:
    env = {"SEGSERVE_MODEL_CONTROL": "explicit", "SEGSERVE_PROCESSES": "2"}
    server = start_server(env, tmp_path / "server.log", wait_ready=False)
    assert server.process.wait(timeout=30) == 2
    (line,) = [json.loads(text) for text in server.log().splitlines()]
    assert "SEGSERVE_MODEL_CONTROL=explicit needs SEGSERVE_PROCESSES=1" in line["message"]


def test_what_is_alive_once_loaded_is_frozen_out_of_the_collector(tmp_path: Path) -> None:
    # In a fresh interpreter: nothing is frozen before the models load, everything after.
    write_tiny_model(tmp_path)
    script = (
        "import asyncio, gc, sys\n"
        "from service.core import Service\n"
        "from service.repository import ModelRepository\n"
        "from service.settings import Settings\n"
        "settings = Settings(model_repository=sys.argv[1])\n"
        "service = Service(settings, ModelRepository.scan(settings.model_repository))\n"
        "before = gc.get_freeze_count()\n"
        "asyncio.run(service.load())\n"
        "print(before, gc.get_freeze_count(), service.loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    before, after, loaded = result.stdout.split()
    assert (int(before), loaded) == (0, "True")
    assert int(after) > 10_000  # the modules, ONNX Runtime's bindings, the card, the batcher


def _holding_server(tmp_path: Path, **settings: str) -> Server:
    """A server whose batches wait 6 s for company: a request stays queued that long."""
    write_tiny_model(tmp_path / "models", "tiny", 1, size=32)
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(tmp_path / "models"),
        **HOLDING,
        "SEGSERVE_MAX_BATCH_DELAY_MS": "6000",
        **{f"SEGSERVE_{k.upper()}": v for k, v in settings.items()},
    }
    return start_server(env, tmp_path / "server.log")


def test_a_request_cut_off_by_the_shutdown_timeout_is_answered_503(tmp_path: Path) -> None:
    server = _holding_server(tmp_path, shutdown_timeout_s="1")
    try:
        with server.client() as client, ThreadPoolExecutor(1) as pool:
            headers = {"Content-Type": "image/png", "X-Request-ID": "cut-off"}
            body = encoded(scene(1))
            pending = pool.submit(client.post, "/segment", content=body, headers=headers)
            wait_for(lambda: queue_depth(server) == 1)
            server.process.send_signal(signal.SIGTERM)
            response = pending.result(timeout=30)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "not_ready"
        assert response.headers["x-request-id"] == "cut-off"
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    (line,) = [
        json.loads(text)
        for text in server.log().splitlines()
        if '"cut-off"' in text and "segserve.access" in text
    ]
    assert (line["status"], line["error"]) == (503, "not_ready")


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    """The first SIGTERM starts a 30 s drain; the second ends it and the queued request with it."""
    server = _holding_server(tmp_path, drain_delay_s="30")
    try:
        with server.client() as client, ThreadPoolExecutor(1) as pool:
            headers = {"Content-Type": "image/png"}
            pool.submit(client.post, "/segment", content=encoded(scene(1)), headers=headers)
            wait_for(lambda: queue_depth(server) == 1)
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "draining" in server.log())
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=30)
            assert time.monotonic() - signalled < 3.0  # not the drain, not the 6 s batch
    finally:
        server.stop()
