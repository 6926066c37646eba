"""Shared fixtures: a model repository built by the tests, and one real server for the session.

``tiny_repo``: ``tiny`` v1 (logits, 32x32) and v2 (in-graph argmax: uint8 labels, 24x24), and
``tiny-b`` v1 (logits, 16x16). The default model is ``tiny``. Every version gives the answer
``tests.support.expected_labels`` predicts, at its own input size.

``server``: ``python -m service`` on that repository with small input limits (so 413 tests stay
cheap), a 10 ms batch window (so concurrent requests are batched) and the gRPC door on
``grpc_port``. Tests that need other settings start their own server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import SERVER_LIMITS, Server, free_port, running_server, write_tiny_model


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    write_tiny_model(repo, "tiny", 1, size=32)
    write_tiny_model(repo, "tiny", 2, size=24, output="labels")
    write_tiny_model(repo, "tiny-b", 1, size=16)
    return repo


@pytest.fixture(scope="session")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def server(
    tiny_repo: Path, grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {
        "SEGSERVE_GRPC_PORT": str(grpc_port),
        "SEGSERVE_MODEL_REPOSITORY": str(tiny_repo),
        "SEGSERVE_DEFAULT_MODEL": "tiny",
        "SEGSERVE_MAX_BATCH_DELAY_MS": "10",
        "SEGSERVE_WORKER_THREADS": "2",
        **SERVER_LIMITS,
    }
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(env, log_path) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
