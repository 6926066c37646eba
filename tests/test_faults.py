"""Overload and faults against a real server: a full queue, clients that go away, deadlines, a
model that fails at run time, broken models at start-up, and SIGTERM under load.

No mocks and no sleeps in the model: "slow" is a real ONNX graph that is genuinely slow on CPU (a
chain of 3x3 convolutions), and "failing" is a real graph whose ``If`` branch does an impossible
``Reshape`` when the input is too bright, so ONNX Runtime itself fails for exactly those inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from tests.images import encode
from tests.support import (
    Server,
    access_line,
    metric_samples,
    running_server,
    start_server,
    tiny_card,
    tiny_model,
    wait_until_ready,
    write_slow_model,
    write_tiny_model,
)

LEAKS = ("Traceback", "/work", ".py", "onnxruntime_src")
IMAGE_PNG = {"Content-Type": "image/png"}


# ---- models built for the faults ----------------------------------------------------------------
def _save(model: onnx.ModelProto, repo: Path, name: str, version: int = 1) -> Path:
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def write_failing_model(repo: Path, name: str = "flaky", limit: float = 0.99) -> Path:
    """The tiny model, except that a batch whose brightest value exceeds ``limit`` (a pure white
    pixel: x = 255/255) makes ONNX Runtime fail: the If's then-branch reshapes 3x32x32 values
    into (-1, 3, 7, 5), which cannot be done. Darker batches get the tiny model's answer."""
    model = tiny_model(tiny_card(name=name))
    graph = model.graph
    ok_branch = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "B"], ["ok_logits"], kernel_shape=[1, 1])],
        "ok",
        [],
        [helper.make_tensor_value_info("ok_logits", TensorProto.FLOAT, None)],
    )
    failing_branch = helper.make_graph(
        [
            helper.make_node(
                "Constant",
                [],
                ["shape"],
                value=helper.make_tensor("shape_value", TensorProto.INT64, [4], [-1, 3, 7, 5]),
            ),
            helper.make_node("Reshape", ["input", "shape"], ["bad_logits"]),
        ],
        "impossible_reshape",
        [],
        [helper.make_tensor_value_info("bad_logits", TensorProto.FLOAT, None)],
    )
    del graph.node[:]
    graph.node.extend(
        [
            helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
            helper.make_node(
                "Constant",
                [],
                ["limit"],
                value=helper.make_tensor("limit_value", TensorProto.FLOAT, [], [limit]),
            ),
            helper.make_node("Greater", ["peak", "limit"], ["too_bright"]),
            helper.make_node(
                "If", ["too_bright"], ["logits"], then_branch=failing_branch, else_branch=ok_branch
            ),
        ]
    )
    return _save(model, repo, name)


# ---- helpers -----------------------------------------------------------------------------------
def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


DARK = png((120, 30, 30))  # reddish, never brighter than the failing model's limit
WHITE = png((255, 255, 255))


def env_for(repo: Path, **settings: object) -> dict[str, str]:
    return {
        "SEGSERVE_MODEL_REPOSITORY": str(repo),
        "SEGSERVE_INTRA_OP_THREADS": "1",
        **{f"SEGSERVE_{k.upper()}": str(v) for k, v in settings.items()},
    }


def gauge(client: httpx.Client, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) from /metrics."""
    text = client.get("/metrics").text
    pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    for leak in LEAKS:
        assert leak not in response.text


async def _burst(base_url: str, n: int, body: bytes) -> list[httpx.Response | BaseException]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post("/segment", content=body, headers={"Content-Type": "image/png"})
                for _ in range(n)
            ),
            return_exceptions=True,
        )


def burst(server: Server, n: int, body: bytes) -> list[httpx.Response]:
    """``n`` concurrent requests, all sent at once; their answers in order."""
    results = asyncio.run(_burst(server.base_url, n, body))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    return [r for r in results if isinstance(r, httpx.Response)]


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("slow") / "models"
    write_slow_model(repo)
    return repo


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


# ---- overload ----------------------------------------------------------------------------------
def test_full_queue_answers_503_with_retry_after_and_recovers(
    slow_repo: Path, log_path: Path
) -> None:
    env = env_for(slow_repo, max_queue=2, max_batch_size=1)
    with running_server(env, log_path) as server, server.client() as client:
        responses = burst(server, 16, DARK)
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        # One running and max_queue waiting get in (a few more as batches finish while the
        # burst arrives); the rest are refused at once.
        assert statuses[200] >= 1
        assert statuses[503] >= 4, statuses
        for r in responses:
            if r.status_code == 503:
                assert_problem(r, 503, "overloaded")
                assert int(r.headers["retry-after"]) >= 1
        assert gauge(client, "segserve_queue_depth") == 0
        assert (
            client.post("/segment", content=DARK, headers={"Content-Type": "image/png"}).status_code
            == 200
        )
        rejected = gauge(client, "segserve_rejections_total")
        assert rejected >= statuses[503]


def test_clients_that_disconnect_free_their_queue_slots(slow_repo: Path, log_path: Path) -> None:
    """1,000 requests abandoned while queued: none keeps its slot, nothing leaks."""
    env = env_for(slow_repo, max_queue=64, max_batch_size=1)
    with running_server(env, log_path) as server, server.client() as client:
        asyncio.run(_abandon(server.base_url, total=1000, concurrency=50, after_s=0.05))
        # Left in the queue, 64 items at ~0.2 s each would keep it busy for >10 s.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            depth = gauge(client, "segserve_queue_depth")
            in_flight = gauge(client, "segserve_in_flight_requests")
            if depth == 0 and in_flight == 0:
                break
            time.sleep(0.1)
        assert (depth, in_flight) == (0, 0)
        started = time.monotonic()
        response = client.post("/segment", content=DARK, headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        assert time.monotonic() - started < 5.0, "the queue was still full of abandoned work"
        assert server.process.poll() is None


async def _abandon(base_url: str, total: int, concurrency: int, after_s: float) -> None:
    """Send ``total`` requests, each given up (connection closed) ``after_s`` after sending."""
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=after_s, limits=limits) as client:

        async def one() -> None:
            try:
                await client.post("/segment", content=DARK, headers={"Content-Type": "image/png"})
            except httpx.TimeoutException:
                return  # the point: httpx closes the connection on a timeout
            # 503 (queue full at that instant) is fine too: the slot was never taken.

        while sent < total:
            wave = min(concurrency, total - sent)
            await asyncio.gather(*(one() for _ in range(wave)))
            sent += wave


def test_deadline_exceeded_gives_504(slow_repo: Path, log_path: Path) -> None:
    env = env_for(slow_repo, request_timeout_ms=100, max_batch_size=1)
    with running_server(env, log_path) as server:
        responses = burst(server, 5, DARK)
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 504}, statuses
        # One request runs (~0.2 s); those queued behind it pass their 0.1 s deadline.
        assert statuses[504] >= 3, statuses
        for r in responses:
            if r.status_code == 504:
                assert_problem(r, 504, "deadline_exceeded")


def test_concurrent_uploads_are_bounded_by_the_body_budget(tmp_path: Path, log_path: Path) -> None:
    """While one slow 0.8 MB upload holds most of a 1.5 MB budget, another one is refused
    with 503 at once (before a byte of it is read), a small one still fits, and once the slow
    upload is done the big one is admitted again."""
    repo = tmp_path / "models"
    write_tiny_model(repo)
    big = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)),
        "PNG",
    )
    assert 700_000 < len(big) < 1_000_000
    env = env_for(repo, max_body_bytes=1_000_000, max_inflight_body_bytes=1_500_000)
    with running_server(env, log_path) as server, server.client() as client:
        asyncio.run(_uploads_against_budget(server.base_url, big))
        assert (
            client.post("/segment", content=big, headers={"Content-Type": "image/png"}).status_code
            == 200
        )
        line = access_line(server, "over-budget")  # the refusal has its line, and is counted
        assert (line["status"], line["error"]) == (503, "overloaded")
        rejected = frozenset({("model", ""), ("reason", "body_budget")})
        assert metric_samples(client)[("segserve_rejections_total", rejected)] == 1


async def _uploads_against_budget(base_url: str, big: bytes) -> None:
    headers = {"Content-Type": "image/png"}
    admitted = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield big[:1000]
        admitted.set()
        await asyncio.sleep(1.0)  # the client is slow: the server holds the reservation
        yield big[1000:]

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        slow = asyncio.create_task(
            client.post(
                "/segment", content=trickle(), headers=headers | {"Content-Length": str(len(big))}
            )
        )
        await admitted.wait()
        await asyncio.sleep(0.2)
        refused = await client.post(
            "/segment", content=big, headers=headers | {"X-Request-ID": "over-budget"}
        )
        assert_problem(refused, 503, "overloaded")
        assert int(refused.headers["retry-after"]) >= 1
        small = await client.post("/segment", content=DARK, headers=headers)
        assert small.status_code == 200
        assert (await slow).status_code == 200


def test_a_client_gone_mid_upload_is_logged_as_closed_not_as_an_error(
    tmp_path: Path, log_path: Path
) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo)
    with running_server(env_for(repo), log_path) as server, server.client() as client:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = (
                "POST /segment HTTP/1.1\r\nHost: x\r\nX-Request-ID: gone-mid-upload\r\n"
                "Content-Type: image/png\r\nContent-Length: 50000\r\n\r\n"
            )
            sock.sendall(head.encode() + DARK[:500])
            time.sleep(0.3)  # the server has started reading the body
        line = access_line(server, "gone-mid-upload")
        assert (line["status"], line["error"]) == (499, "client_closed")
        closed = frozenset({("model", "tiny"), ("reason", "client_closed")})
        assert metric_samples(client)[("segserve_rejections_total", closed)] == 1
        assert client.post("/segment", content=DARK, headers=IMAGE_PNG).status_code == 200
    assert "Traceback" not in server.log()


def test_an_unexpected_error_is_a_500_with_the_request_id_and_a_logged_traceback(
    tmp_path: Path, log_path: Path
) -> None:
    """A bug, injected into the real server (``sitecustomize`` runs at its start): the client
    gets a 500 problem without details but with its request id; the log gets the traceback and
    the access line, both naming the request; the server goes on."""
    repo = tmp_path / "models"
    write_tiny_model(repo)
    (tmp_path / "sitecustomize.py").write_text(
        "import service.api as api\n"
        "negotiate = api.negotiate\n"
        "def failing(accept):\n"
        "    if accept == 'application/x-fault':\n"
        "        raise RuntimeError('an injected bug')\n"
        "    return negotiate(accept)\n"
        "api.negotiate = failing\n"
    )
    env = env_for(repo) | {"PYTHONPATH": str(tmp_path)}
    with running_server(env, log_path) as server, server.client() as client:
        headers = IMAGE_PNG | {"Accept": "application/x-fault", "X-Request-ID": "bug-1"}
        failed = client.post("/segment", content=DARK, headers=headers)
        assert_problem(failed, 500, "internal_error")
        assert failed.headers["x-request-id"] == "bug-1"
        line = access_line(server, "bug-1")
        assert (line["status"], line["error"]) == (500, "internal_error")
        (traceback,) = [
            json.loads(text)
            for text in server.log().splitlines()
            if "unhandled error on POST /segment" in text
        ]
        assert traceback["request_id"] == "bug-1"
        assert "an injected bug" in traceback["exception"]
        assert client.post("/segment", content=DARK, headers=IMAGE_PNG).status_code == 200


# ---- a model that fails at run time --------------------------------------------------------------
def test_inference_error_fails_only_its_batch_and_the_server_goes_on(
    tmp_path: Path, log_path: Path
) -> None:
    repo = tmp_path / "models"
    write_failing_model(repo)
    with (
        running_server(env_for(repo, max_batch_size=1), log_path) as server,
        server.client() as client,
    ):
        before = client.post("/segment", content=DARK, headers={"Content-Type": "image/png"})
        assert before.status_code == 200
        # One poisoned request among valid ones, batches of one: only it fails.
        bodies = [DARK] * 3 + [WHITE] + [DARK] * 3
        responses = asyncio.run(_mixed(server.base_url, bodies))
        for body, response in zip(bodies, responses, strict=True):
            if body is WHITE:
                assert_problem(response, 500, "inference_failed")
            else:
                assert response.status_code == 200
                assert response.content == before.content
        after = client.post("/segment", content=DARK, headers={"Content-Type": "image/png"})
        assert after.content == before.content
        assert server.process.poll() is None
    assert "inference failed" in server.log()  # the server logs what the client is not told


async def _mixed(base_url: str, bodies: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post("/segment", content=b, headers={"Content-Type": "image/png"})
                    for b in bodies
                )
            )
        )


def test_a_failed_batch_takes_down_only_the_requests_batched_with_it(
    tmp_path: Path, log_path: Path
) -> None:
    """With batching, the requests that shared the poisoned batch fail with it (the model ran
    once for all of them), and the next batch is fine."""
    repo = tmp_path / "models"
    write_failing_model(repo)
    # Not eager: a batch waits out the delay, so the three requests share it whatever the order
    # in which their uploads are read and decoded.
    env = env_for(repo, max_batch_size=8, max_batch_delay_ms=300, batch_eager="false")
    with running_server(env, log_path) as server, server.client() as client:
        responses = asyncio.run(_mixed(server.base_url, [DARK, WHITE, DARK]))
        assert [r.status_code for r in responses] == [500, 500, 500]
        later = client.post("/segment", content=DARK, headers={"Content-Type": "image/png"})
        assert later.status_code == 200


# ---- broken models at start-up -----------------------------------------------------------------
def _exit_of(env: dict[str, str], log: Path, timeout: float = 60.0) -> tuple[int, str]:
    server = start_server(env, log, wait_ready=False)
    try:
        code = server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"the server kept running with a broken model repository:\n{server.log()}")
    return code, server.log()


def test_missing_model_repository_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    code, log = _exit_of(env_for(tmp_path / "nowhere"), tmp_path / "server.log")
    assert code != 0
    assert "nowhere" in log


def test_corrupt_model_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    path = write_tiny_model(repo, name="broken")
    path.write_bytes(path.read_bytes()[:200] + b"\xde\xad\xbe\xef" * 64)
    code, log = _exit_of(env_for(repo), tmp_path / "server.log")
    assert code != 0
    assert "broken" in log


def test_model_without_a_card_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    path = write_tiny_model(repo, name="anonymous")
    model = onnx.load(path)
    del model.metadata_props[:]
    onnx.save(model, path)
    code, log = _exit_of(env_for(repo), tmp_path / "server.log")
    assert code != 0
    assert "anonymous" in log


def _reshaped(path: Path, breakage: str) -> None:
    """The tiny model at ``path`` (64 x 64, a 3 x 3 convolution) broken as other exporters
    break theirs."""
    model = onnx.load(path)
    graph = model.graph
    out = graph.output[0].type.tensor_type.shape
    if breakage == "batch-of-2":  # exported for exactly two images
        for shape in (graph.input[0].type.tensor_type.shape, out):
            shape.dim[0].dim_value = 2
    elif breakage == "cropped":  # valid padding: 64 -> 62, not an image of the input
        (pads,) = [a for a in graph.node[0].attribute if a.name == "pads"]
        pads.ints[:] = [0, 0, 0, 0]
        out.dim[2].dim_param, out.dim[3].dim_param = "h", "w"
    else:  # a classifier's pooled (N, C, 1, 1) scores
        graph.node[0].output[0] = "features"
        graph.node.append(helper.make_node("GlobalAveragePool", ["features"], ["logits"]))
        out.dim[2].dim_value = out.dim[3].dim_value = 1
    onnx.save(model, path)


@pytest.mark.parametrize("breakage", ["batch-of-2", "cropped", "pooled"])
def test_a_model_that_gives_no_mask_exits_nonzero_with_a_clear_message(
    tmp_path: Path, breakage: str
) -> None:
    repo = tmp_path / "models"
    path = write_tiny_model(
        repo, name="unservable", size=64, model={"weights": np.ones((3, 3, 3, 3), np.float32)}
    )
    _reshaped(path, breakage)
    code, log = _exit_of(env_for(repo), tmp_path / "server.log")
    assert code == 1
    reason = {
        "batch-of-2": "takes batches of exactly 2 images",
        "cropped": "not the input's divided by a whole factor",
        "pooled": "coarser than 1/32",
    }[breakage]
    (line,) = [json.loads(text) for text in log.splitlines() if reason in text]
    assert "unservable" in line["message"]
    assert "unexpected" not in line["message"]


def test_a_model_fixed_at_one_image_is_served_one_image_per_batch(
    tmp_path: Path, log_path: Path
) -> None:
    repo = tmp_path / "models"
    path = write_tiny_model(repo, size=32)
    model = onnx.load(path)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, path)
    held = env_for(repo, batch_eager="false", max_batch_delay_ms=200)
    with running_server(held, log_path) as server, server.client() as client:
        responses = asyncio.run(_burst(server.base_url, 6, DARK))
        assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in responses)
        sizes = metric_samples(client)
        batches = sizes[
            ("segserve_batch_size_count", frozenset({("model", "tiny"), ("version", "1")}))
        ]
        images = sizes[
            ("segserve_batch_size_sum", frozenset({("model", "tiny"), ("version", "1")}))
        ]
        assert batches == images >= 6  # the warm-up is not counted: every batch held one image


# ---- SIGTERM under load --------------------------------------------------------------------------
def test_sigterm_under_load_finishes_every_accepted_request(
    slow_repo: Path, log_path: Path
) -> None:
    server = start_server(env_for(slow_repo, max_batch_size=2), log_path)
    try:
        responses = asyncio.run(_terminate_under_load(server, n=6))
        assert [r.status_code for r in responses] == [200] * 6
        assert server.process.wait(30) == 0
    finally:
        server.stop()


async def _terminate_under_load(server: Server, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        tasks = [
            asyncio.create_task(
                client.post("/segment", content=DARK, headers={"Content-Type": "image/png"})
            )
            for _ in range(n)
        ]
        # Wait until all of them are in the server (6 x ~0.1 s of work queued), then SIGTERM.
        for _ in range(250):
            metrics = (await client.get("/metrics")).text
            if f"segserve_in_flight_requests {float(n)}" in metrics:
                break
            await asyncio.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        return list(await asyncio.gather(*tasks))


def test_not_ready_while_loading_then_ready(tmp_path: Path, log_path: Path) -> None:
    """/healthz answers at once; /readyz, /models and /segment answer 503 not_ready until the
    model is loaded and its warm-up batch (~1 s of a 300-convolution graph) has run."""
    repo = tmp_path / "models"
    write_slow_model(repo, convs=300)
    server = start_server(env_for(repo), log_path, wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, server.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.02)
        with server.client() as client:
            ready = client.get("/readyz")
            assert_problem(ready, 503, "not_ready")
            assert "loading" in ready.json()["detail"]
            assert_problem(client.get("/models"), 503, "not_ready")
            assert_problem(
                client.post("/segment", content=png((9, 9, 9)), headers=IMAGE_PNG), 503, "not_ready"
            )
            wait_until_ready(server, timeout=120)
            assert client.post("/segment", content=png((9, 9, 9)), headers=IMAGE_PNG).is_success
    finally:
        server.stop()
