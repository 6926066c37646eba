"""SEGSERVE_PROCESSES > 1: several server processes on one port, real uvicorn, real models."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.images import encoded, scene
from tests.support import (
    HOLDING,
    Server,
    expected_mask,
    metric_samples,
    png_labels,
    queue_depth,
    start_server,
    wait_for,
    write_tiny_model,
)

PROCESSES = {"SEGSERVE_PROCESSES": "2", "SEGSERVE_WORKER_THREADS": "1"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    write_tiny_model(tmp_path / "models", "tiny", 1, size=32)
    return {"SEGSERVE_MODEL_REPOSITORY": str(tmp_path / "models"), **PROCESSES, **extra}


def _children(pid: int) -> set[int]:
    """The server processes under the supervisor (spawned; not multiprocessing's helpers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening_pids(port: int) -> set[int]:
    """The processes holding a socket that listens on ``port`` (from /proc, as ``ss -ltp``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                pids.add(int(fd_dir.parent.name))
        except OSError:  # a process that ended, or not ours to read
            continue
    return pids


def _requests_total(server: Server) -> float:
    with server.client() as client:
        samples = metric_samples(client)
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "segserve_requests_total" and ("code", "200") in labels
    )


def _stop_checked(server: Server) -> None:
    if server.process.poll() is None:
        server.stop()


def test_processes_share_the_port_and_report_metrics_together(tmp_path: Path) -> None:
    server = start_server(_env(tmp_path), tmp_path / "server.log")
    try:
        children = _children(server.process.pid)
        assert len(children) == 2, server.log()
        # Ready means every process listens, so new connections can reach each of them.
        assert _listening_pids(int(server.base_url.rsplit(":", 1)[1])) == children
        images = [scene(100 + i) for i in range(40)]

        def one(image):  # a connection per request, so the kernel spreads them over both
            with server.client(headers={"Connection": "close"}) as client:
                return client.post(
                    "/segment", content=encoded(image), headers={"Content-Type": "image/png"}
                )

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, images))
        for response, image in zip(responses, images, strict=True):
            assert response.status_code == 200
            assert (png_labels(response) == expected_mask(image, 32)).all()
        # Whichever process answers the scrape reports the requests of both.
        assert [_requests_total(server) for _ in range(6)] == [40.0] * 6
    finally:
        assert server.stop() == 0
    access = [
        line
        for line in map(json.loads, server.log().splitlines())
        if line["logger"] == "segserve.access"
    ]
    assert {line["pid"] for line in access} == children
    assert not any(_alive(pid) for pid in children)


def test_sigterm_drains_every_process_and_exits_0(tmp_path: Path) -> None:
    server = start_server(_env(tmp_path, **HOLDING), tmp_path / "server.log")
    images = [scene(200 + i) for i in range(6)]
    try:
        children = _children(server.process.pid)

        def one(image):
            with server.client(headers={"Connection": "close"}) as client:
                return client.post(
                    "/segment", content=encoded(image), headers={"Content-Type": "image/png"}
                )

        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(one, image) for image in images]
            wait_for(lambda: queue_depth(server) == 6)  # summed over both processes
            server.process.send_signal(signal.SIGTERM)
            responses = [p.result(timeout=30) for p in pending]
        assert [r.status_code for r in responses] == [200] * 6
        assert server.process.wait(timeout=30) == 0
        assert not any(_alive(pid) for pid in children)
    finally:
        _stop_checked(server)


def test_a_process_that_dies_stops_the_server_with_exit_1(tmp_path: Path) -> None:
    server = start_server(_env(tmp_path), tmp_path / "server.log")
    try:
        victim, survivor = sorted(_children(server.process.pid))
        os.kill(victim, signal.SIGKILL)
        assert server.process.wait(timeout=30) == 1
        wait_for(lambda: not _alive(survivor), timeout=10)
    finally:
        _stop_checked(server)
    assert "exited with -9; stopping the others" in server.log()


@pytest.mark.parametrize(
    ("failure", "code", "expected"),
    [
        ("corrupt model", 1, "cannot load"),
        ("port taken", 3, "SEGSERVE_PORT"),
        ("port shared", 3, "SEGSERVE_PORT"),  # held by a program that also sets SO_REUSEPORT
    ],
)
def test_a_server_that_cannot_start_stops_every_process(
    tmp_path: Path, failure: str, code: int, expected: str
) -> None:
    env = _env(tmp_path)
    taken = socket.socket()
    if failure == "port shared":
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    if failure == "corrupt model":
        model = tmp_path / "models" / "tiny" / "1" / "model.onnx"
        model.write_bytes(model.read_bytes()[:100])
    else:
        env["SEGSERVE_PORT"] = str(taken.getsockname()[1])
    server = start_server(env, tmp_path / "server.log", wait_ready=False)
    try:
        assert server.process.wait(timeout=60) == code
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit:\n{server.log()}")
    finally:
        taken.close()
        _stop_checked(server)
    errors = [
        line for line in map(json.loads, server.log().splitlines()) if line["level"] == "error"
    ]
    assert any(expected in line["message"] for line in errors), server.log()
    time.sleep(0.5)
    assert not _children(server.process.pid)


def test_sigterm_while_the_processes_start_still_exits_0(tmp_path: Path) -> None:
    server = start_server(_env(tmp_path), tmp_path / "server.log", wait_ready=False)
    try:
        wait_for(lambda: len(_children(server.process.pid)) == 2, timeout=30)
        children = _children(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log()
        assert not any(_alive(pid) for pid in children)
    finally:
        _stop_checked(server)
