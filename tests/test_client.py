"""segserve_client against a real server: the sync and async API, its errors, the folder CLI
(resumable, COCO results, summary, exit status), and retries on a server that sheds load."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segserve_client import AsyncClient, Client, SegserveError
from tests.images import encoded, scene
from tests.support import ROOT, Server, expected_mask, metric_samples, running_server

DEFAULT_SIDE = 24  # the shared server's default model: tiny v2 (tests/conftest.py)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segserve_client", "--url", server.base_url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def image_folder(folder: Path, count: int, *, broken: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene(i, 40 + i, 30).save(folder / f"scene-{i:02d}.png")
    for i in range(broken):
        (folder / f"broken-{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_the_client_needs_none_of_the_servers_dependencies() -> None:
    script = (
        "import sys, segserve_client, segserve_client.__main__\n"
        "heavy = {'fastapi', 'starlette', 'uvicorn', 'onnxruntime', 'pydantic', 'service', "
        "'torch', 'prometheus_client'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_sync_client_segments_png_and_rle(server: Server) -> None:
    image = scene(3, 50, 40)
    with Client(server.base_url) as client:
        result = client.segment(encoded(image))
        np.testing.assert_array_equal(result.labels(), expected_mask(image, DEFAULT_SIDE))
        assert (result.model, result.version) == ("tiny", 2)
        assert set(result.timing_ms) == {"decode", "queue", "infer", "encode"}
        rle = client.segment(encoded(image), fmt="rle", model="tiny", version=1).json()
        assert (rle["model"], rle["version"], rle["width"], rle["height"]) == ("tiny", 1, 50, 40)
        assert client.models()["default"] == "tiny"


def test_errors_carry_the_problem_code(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"nope")
    with Client(server.base_url) as client:
        with pytest.raises(SegserveError) as invalid:
            client.segment(path)
        assert (invalid.value.status, invalid.value.code) == (400, "invalid_image")
        with pytest.raises(SegserveError) as unknown:
            client.segment(encoded(scene(1)), model="nope")
        assert unknown.value.code == "model_not_found"
    with Client("http://127.0.0.1:9", timeout_s=2) as nowhere:
        for call in (lambda: nowhere.segment(encoded(scene(1))), nowhere.models):
            with pytest.raises(SegserveError) as down:
                call()
            assert (down.value.status, down.value.code) == (0, "connection_error")


def test_async_client_segments_concurrently(server: Server) -> None:
    images = [scene(i, 33, 21) for i in range(6)]

    async def scenario() -> list[np.ndarray]:
        async with AsyncClient(server.base_url) as client:
            results = await asyncio.gather(*(client.segment(encoded(im)) for im in images))
        return [r.labels() for r in results]

    for image, labels in zip(images, asyncio.run(scenario()), strict=True):
        np.testing.assert_array_equal(labels, expected_mask(image, DEFAULT_SIDE))


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_cli_segments_a_folder_resumably_with_coco_results(server: Server, tmp_path: Path) -> None:
    source = image_folder(tmp_path / "in", 5, broken=1)
    (source / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    first = cli(server, "segment", str(source), "--out", str(out), "--format", "rle", "-j", "3")
    assert first.returncode == 1, first.stderr  # the broken image failed
    assert "segmented 5, skipped 0 (done before), failed 1 of 6 images" in first.stdout
    assert "errors by code: invalid_image 1" in first.stdout
    assert "failed: broken-0.png: 400 invalid_image" in first.stderr
    answers = sorted(p.name for p in out.glob("*.rle.json"))
    assert answers == [f"scene-{i:02d}.png.rle.json" for i in range(5)]

    coco = json.loads((out / "coco_results.json").read_text())
    assert {r["file_name"] for r in coco} == {f"scene-{i:02d}.png" for i in range(5)}
    from pycocotools import mask as coco_mask

    for result in coco:
        rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
        assert int(coco_mask.decode(rle).sum()) == result["area"]

    (source / "broken-0.png").unlink()
    image_folder(source, 7)  # two more images
    second = cli(server, "segment", str(source), "--out", str(out), "--format", "rle")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "segmented 2, skipped 5 (done before), failed 0 of 7 images" in second.stdout
    assert len(json.loads((out / "coco_results.json").read_text())) >= 7


@pytest.mark.parametrize("fmt", ["png", "overlay"])
def test_cli_writes_png_and_overlay_answers(server: Server, tmp_path: Path, fmt: str) -> None:
    source = image_folder(tmp_path / "in", 2)
    run = cli(server, "segment", str(source), "--out", str(tmp_path / "out"), "--format", fmt)
    assert run.returncode == 0, run.stderr
    for i in range(2):
        answer = Image.open(
            tmp_path / "out" / f"scene-{i:02d}.png.{'mask' if fmt == 'png' else fmt}.png"
        )
        assert answer.size == (40 + i, 30)
        assert answer.mode == ("P" if fmt == "png" else "RGB")


async def retry_after_honoured(server: Server) -> tuple[int, float]:
    """Two images at once on a queue of one: the refused one's attempts and seconds taken."""
    async with AsyncClient(server.base_url, max_retry_wait_s=10) as client:
        started = time.monotonic()

        async def timed(data: bytes) -> tuple[int, float]:
            result = await client.segment(data)
            return result.attempts, time.monotonic() - started

        results = await asyncio.gather(timed(encoded(scene(1))), timed(encoded(scene(2))))
    return max(results)


def test_cli_retries_a_server_that_sheds_load(tiny_repo: Path, tmp_path: Path) -> None:
    # One image queued at a time, each held 200 ms: of 8 concurrent requests, most get 503.
    env = {
        "SEGSERVE_MODEL_REPOSITORY": str(tiny_repo),
        "SEGSERVE_MAX_QUEUE": "1",
        "SEGSERVE_MAX_BATCH_SIZE": "8",
        "SEGSERVE_MAX_BATCH_DELAY_MS": "200",
        "SEGSERVE_BATCH_EAGER": "false",
    }
    source = image_folder(tmp_path / "in", 8)
    with running_server(env, tmp_path / "server.log") as server:
        shed = cli(
            server,
            "--retries",
            "0",
            "segment",
            str(source),
            "--out",
            str(tmp_path / "a"),
            "-j",
            "8",
        )
        assert shed.returncode == 1
        assert "errors by code: overloaded" in shed.stdout

        # One retry each: every refusal but a failed image's last is retried, and counted.
        before = overloaded(server)
        once = cli(server, "--max-retry-wait", "0", "--retries", "1",
                   "segment", str(source), "--out", str(tmp_path / "c"), "-j", "8")  # fmt: skip
        failed = int(once.stdout.split("failed ")[1].split(" of")[0])
        retries = int(once.stdout.split(" retries")[0].rsplit(" ", 1)[1])
        assert retries == overloaded(server) - before - failed

        run = cli(
            server,
            "--max-retry-wait",
            "0.3",
            "--retries",
            "100",
            "segment",
            str(source),
            "--out",
            str(tmp_path / "b"),
            "-j",
            "8",
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "segmented 8, skipped 0 (done before), failed 0 of 8 images" in run.stdout
        retries = int(run.stdout.split(" retries")[0].rsplit(" ", 1)[1])
        assert retries > 0
        honoured = asyncio.run(retry_after_honoured(server))
        assert honoured[0] == 2  # attempts of the image that was refused once
        assert 1.0 <= honoured[1] < 5.0  # it waited out Retry-After: 1, then was served

        assert overloaded(server) >= retries


def overloaded(server: Server) -> float:
    """The server's refusals for a full queue so far."""
    with server.client() as client:
        samples = metric_samples(client)
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "segserve_rejections_total" and ("reason", "overloaded") in labels
    )
