"""The CPU image, built from `Dockerfile` and run by a real Docker engine (`make docker-test`).

The container runs as the image says (uid 10001, `python -m service` as PID 1) on a read-only
root with a tmpfs `/tmp`, on the host network, listening on 127.0.0.1 only, with a model
repository mounted over `/models`. Its answers are compared with a `python -m service` run on the
host from the same repository; Debian's `prometheus` scrapes it with `docker/prometheus`'s config
(only the target changes: compose's `segserve:8000` becomes the container's address here).

Not part of `make test`: the `docker` marker is deselected there (pyproject's addopts), and the
module skips when no engine answers. `make docker-test` starts an engine where none runs and makes
the base image where Docker Hub cannot be reached (docker/with-engine.sh, docker/base-image.sh).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.deploy_files import DASHBOARD, PROMETHEUS_CONFIG, ROOT
from tests.support import (
    HOLDING,
    expected_mask,
    free_port,
    metric_samples,
    png_labels,
    running_server,
    wait_for,
    write_tiny_model,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

TAG = "segserve:docker-test"
BUNDLED = ROOT / "models" / "shapes-fcn"
UID = "10001"


def docker(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(argv)}:\n{result.stdout}{result.stderr}"
    return result


@dataclass
class Container:
    name: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def state(self) -> dict[str, Any]:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        result = docker("logs", "--tail", "60", self.name, check=False)
        return result.stdout + result.stderr

    def wait_until_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.state()["Running"], f"container exited:\n{self.logs()}"
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s:\n{self.logs()}")


def start_container(repository: Path, env: dict[str, str]) -> Container:
    """`docker run` the image, read-only, on the host network, ``repository`` over /models."""
    container = Container(f"segserve-test-{os.getpid()}-{free_port()}", free_port())
    settings = {"SEGSERVE_HOST": "127.0.0.1", "SEGSERVE_PORT": str(container.port), **env}
    docker(
        "run", "--detach", "--name", container.name,
        "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{repository}:/models:ro",
        *(f"--env={key}={value}" for key, value in settings.items()),
        TAG,
    )  # fmt: skip
    return container


@contextlib.contextmanager
def running_container(repository: Path, env: dict[str, str]) -> Iterator[Container]:
    container = start_container(repository, env)
    try:
        yield container
    finally:
        docker("rm", "--force", container.name, check=False)


@pytest.fixture(scope="module", autouse=True)
def image() -> str:
    """The CPU image, built from the Dockerfile (the layer cache makes a rebuild quick)."""
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.skip("no Docker engine answers: `make docker-test` starts one")
    docker("build", "--network", "host", "--tag", TAG, str(ROOT), timeout=900)
    return TAG


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny v1 (its mask is predicted exactly) and, when present, the bundled shapes-fcn."""
    repo = tmp_path_factory.mktemp("repository") / "models"
    write_tiny_model(repo, "tiny", 1, size=32)
    if (BUNDLED / "1" / "model.onnx").exists():
        shutil.copytree(BUNDLED, repo / "shapes-fcn")
    return repo


@pytest.fixture(scope="module")
def container(repository: Path) -> Iterator[Container]:
    env = {
        "SEGSERVE_DEFAULT_MODEL": "tiny",
        "SEGSERVE_MODEL_CONTROL": "poll",
        "SEGSERVE_MODEL_POLL_INTERVAL_S": "1",
    }
    with running_container(repository, env) as started:
        started.wait_until_ready()
        yield started


def drawn_image() -> Image.Image:
    """Red and green blocks on grey, not at the tiny model's size (so both resizes run)."""
    rgb = np.full((40, 56, 3), 128, np.uint8)
    rgb[4:20, 6:30] = (255, 0, 0)
    rgb[22:38, 28:52] = (0, 255, 0)
    return Image.fromarray(rgb)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def segment(client: httpx.Client, body: bytes, media_type: str, **params: str) -> httpx.Response:
    response = client.post(
        "/segment", params=params, content=body, headers={"Content-Type": media_type}
    )
    assert response.status_code == 200, response.text
    return response


def test_container_runs_as_uid_10001_on_a_read_only_root(container: Container) -> None:
    assert docker("exec", container.name, "id", "-u").stdout.strip() == UID
    # python is PID 1, so `docker stop`'s SIGTERM reaches the server itself.
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[:3] == ["python", "-m", "service"]
    for path in ("/opt/venv/written", "/models/written"):
        refused = docker("exec", container.name, "touch", path, check=False)
        assert refused.returncode != 0
        assert "Read-only file system" in refused.stderr
    docker("exec", container.name, "touch", "/tmp/written")  # the tmpfs is the one scratch place


def test_healthcheck_reports_healthy(container: Container) -> None:
    # The image's own HEALTHCHECK (first run one --interval, 15 s, after the start).
    deadline = time.monotonic() + 90
    while (health := container.state()["Health"])["Status"] != "healthy":
        assert health["Status"] == "starting", f"{health}\n{container.logs()}"
        assert time.monotonic() < deadline, f"not healthy after 90 s: {health}"
        time.sleep(1)
    assert health["Log"][-1]["ExitCode"] == 0


def test_segment_answers_the_mask_a_host_run_server_answers(
    container: Container, repository: Path, tmp_path: Path
) -> None:
    drawn = png_bytes(drawn_image())
    cases = [("tiny", drawn, "image/png")]
    if (repository / "shapes-fcn").exists():
        cases.append(("shapes-fcn", (ROOT / "examples" / "shapes.jpg").read_bytes(), "image/jpeg"))
    env = {"SEGSERVE_MODEL_REPOSITORY": str(repository), "SEGSERVE_DEFAULT_MODEL": "tiny"}
    with (
        running_server(env, tmp_path / "host.log") as host,
        host.client() as on_host,
        container.client() as in_container,
    ):
        for model, body, media_type in cases:
            theirs = segment(in_container, body, media_type, model=model)
            ours = segment(on_host, body, media_type, model=model)
            assert theirs.headers["X-Model"] == ours.headers["X-Model"] == model
            np.testing.assert_array_equal(png_labels(theirs), png_labels(ours), err_msg=model)
            if model == "tiny":
                np.testing.assert_array_equal(png_labels(theirs), expected_mask(drawn_image(), 32))


def test_a_version_dropped_into_the_mounted_repository_is_served(
    container: Container, repository: Path
) -> None:
    # Written beside the repository, then renamed into it whole, as docs/API.md asks.
    staging = repository.parent / "staging"
    write_tiny_model(staging, "tiny", 2, size=24, output="labels")
    (staging / "tiny" / "2").rename(repository / "tiny" / "2")
    with container.client() as client:

        def served_versions() -> list[int]:
            return [v["version"] for v in client.get("/models/tiny").json()["versions"]]

        wait_for(lambda: 2 in served_versions(), timeout=30)
        response = segment(client, png_bytes(drawn_image()), "image/png", model="tiny", version="2")
    assert response.headers["X-Model-Version"] == "2"
    np.testing.assert_array_equal(png_labels(response), expected_mask(drawn_image(), 24))


def queue_depth(container: Container) -> float:
    with container.client() as client:
        samples = metric_samples(client)
    return sum(v for (name, _), v in samples.items() if name == "segserve_queue_depth")


def test_docker_stop_lets_an_in_flight_request_finish_and_exits_0(repository: Path) -> None:
    # HOLDING keeps the request in the batcher's queue for 1.5 s: in flight when the stop comes.
    with running_container(repository, {"SEGSERVE_DEFAULT_MODEL": "tiny", **HOLDING}) as held:
        held.wait_until_ready()
        with ThreadPoolExecutor(1) as pool, held.client() as client:
            body = png_bytes(drawn_image())
            answer = pool.submit(segment, client, body, "image/png", model="tiny", version="1")
            wait_for(lambda: queue_depth(held) >= 1, timeout=10)
            started = time.monotonic()
            docker("stop", "--time", "40", held.name, timeout=60)
            stop_s = time.monotonic() - started
            response = answer.result(timeout=30)
        state = held.state()
    np.testing.assert_array_equal(png_labels(response), expected_mask(drawn_image(), 32))
    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), held.logs()
    assert stop_s < 40  # it exited on its own, not by the SIGKILL at the end of --time


@contextlib.contextmanager
def prometheus_scraping(target: str, workdir: Path) -> Iterator[str]:
    """Debian's prometheus on 127.0.0.1, with docker/prometheus's config aimed at ``target``."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed: apt-get install prometheus (make docker-test does)")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def scrape_interval_s() -> int:
    interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert interval.endswith("s"), interval
    return int(interval[:-1])


def panel_queries(rate_interval: str) -> dict[str, list[str]]:
    """Each panel's PromQL as Grafana sends it: $__rate_interval filled in, $model = All (.*)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {
        panel["title"]: [
            t["expr"].replace("$__rate_interval", rate_interval).replace("$model", ".*")
            for t in panel["targets"]
        ]
        for panel in panels
        if panel.get("targets")
    }


def test_prometheus_scrapes_the_container_and_every_dashboard_panel_has_data(
    container: Container, tmp_path: Path
) -> None:
    scrape_s = scrape_interval_s()
    rate_interval_s = 4 * scrape_s  # Grafana's $__rate_interval: at least 4 scrape intervals
    good, bad = png_bytes(drawn_image()), b"\x89PNG truncated"
    with (
        prometheus_scraping(f"127.0.0.1:{container.port}", tmp_path) as prometheus,
        container.client() as client,
        httpx.Client(base_url=prometheus, timeout=10) as api,
    ):
        # A light, steady load with one bad image in four, over a whole rate window and more.
        until = time.monotonic() + rate_interval_s + 2 * scrape_s
        while time.monotonic() < until:
            for body in (good, good, good, bad):
                client.post("/segment", content=body, headers={"Content-Type": "image/png"})
            time.sleep(0.2)
        (target,) = api.get("/api/v1/targets").json()["data"]["activeTargets"]
        assert target["health"] == "up", target
        empty = {}
        for title, queries in panel_queries(f"{rate_interval_s}s").items():
            for query in queries:
                result = api.get("/api/v1/query", params={"query": query}).json()
                assert result["status"] == "success", result
                values = [float(series["value"][1]) for series in result["data"]["result"]]
                if not [v for v in values if math.isfinite(v)]:
                    empty.setdefault(title, []).append(query)
    assert not empty, f"panels without data: {empty}"
