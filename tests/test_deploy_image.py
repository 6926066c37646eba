"""The CPU image's CMD, run on this host with the image's ENV, gives a ready server that answers
/segment, passes the image's HEALTHCHECK and exposes every series the dashboard and the
autoscaler query. (No Docker engine here: this is the closest honest stand-in for `docker run`.)

Differences from the container, all forced by running on the host: `python` is this venv's
interpreter (the image's is /opt/venv/bin/python with the same constraints.txt pins), the
listen address is 127.0.0.1 on a free port instead of 0.0.0.0:8000, and SEGSERVE_MODEL_REPOSITORY
points at the repository's models/ (what the image copies to /models) or, while the bundled model
is not there, at a tiny test model.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy_files import DOCKERFILES, ROOT, final_stage, referenced_series
from tests.support import Server, expected_labels, free_port, wait_until_ready, write_tiny_model

IMAGE = final_stage(DOCKERFILES[0])
BUNDLED = ROOT / "models" / "shapes-fcn" / "1" / "model.onnx"


def host_argv(argv: list[str]) -> list[str]:
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("image")
    if BUNDLED.exists():
        repository = ROOT / "models"
    else:
        repository = tmp / "models"
        write_tiny_model(repository)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    env |= {k: v for k, v in IMAGE.env.items() if k.startswith(("SEGSERVE_", "PYTHON"))}
    env |= {
        "SEGSERVE_MODEL_REPOSITORY": str(repository),
        "SEGSERVE_HOST": "127.0.0.1",
        "SEGSERVE_PORT": str(free_port()),
    }
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        # cwd is a scratch folder: the image has no source tree, so nothing may rely on one.
        process = subprocess.Popen(
            host_argv(IMAGE.cmd), cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(process, f"http://127.0.0.1:{env['SEGSERVE_PORT']}", log_path)
    try:
        wait_until_ready(server, timeout=90)
        yield server
    finally:
        assert server.stop() == 0, server.log()  # SIGTERM drains and exits cleanly, as on k8s


def run_healthcheck(port: int) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SEGSERVE_PORT": str(port)}
    return subprocess.run(host_argv(IMAGE.healthcheck), env=env, capture_output=True, timeout=30)


def test_image_command_serves_segment(image_server: Server) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)  # the tiny model's input size: no resampling at edges
    rgb[4:14, 2:20] = (255, 0, 0)
    rgb[18:30, 12:30] = (0, 255, 0)
    body = io.BytesIO()
    Image.fromarray(rgb).save(body, "PNG")
    with image_server.client() as client:
        response = client.post(
            "/segment", content=body.getvalue(), headers={"Content-Type": "image/png"}
        )
    assert response.status_code == 200, response.text
    mask = Image.open(io.BytesIO(response.content))
    assert (mask.mode, mask.size) == ("P", (32, 32))
    if BUNDLED.exists():
        assert response.headers["X-Model"] == "shapes-fcn"
    else:
        assert response.headers["X-Model"] == "tiny"
        np.testing.assert_array_equal(np.asarray(mask), expected_labels(rgb))


def test_image_healthcheck_passes_on_a_live_server_and_fails_without_one(
    image_server: Server,
) -> None:
    port = int(image_server.base_url.rsplit(":", 1)[1])
    assert run_healthcheck(port).returncode == 0
    assert run_healthcheck(free_port()).returncode != 0  # nothing listens there


def test_metrics_expose_every_series_the_dashboard_and_autoscaler_query(
    image_server: Server,
) -> None:
    with image_server.client() as client:
        body = io.BytesIO()
        Image.new("RGB", (32, 32), (255, 0, 0)).save(body, "PNG")
        # One success and one refusal, so labelled series exist for both.
        assert (
            client.post(
                "/segment", content=body.getvalue(), headers={"Content-Type": "image/png"}
            ).status_code
            == 200
        )
        assert (
            client.post(
                "/segment", content=b"not an image", headers={"Content-Type": "image/png"}
            ).status_code
            == 400
        )
        exposition = client.get("/metrics")
    assert exposition.status_code == 200
    samples = {s.name for f in text_string_to_metric_families(exposition.text) for s in f.samples}
    missing = referenced_series() - samples
    assert not missing, f"queried but not exposed: {sorted(missing)}"


def test_readiness_is_what_the_probes_expect(image_server: Server) -> None:
    with httpx.Client(base_url=image_server.base_url, timeout=5) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
