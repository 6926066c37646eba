"""Smoke tests of the bench tools on the tiny model: they run, bound themselves and check answers.

Speed is never asserted here (that is what ``bench/`` reports are for); only that the tools
measure what they claim: real servers, real answers, the service's own pipeline.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench import offline, overload, policies, procstat, sections, sweep
from bench.images import jpeg_bytes, sample_jpeg
from bench.loadtest import LoadSpec, check_answer, require_loopback, run
from bench.server import serve
from bench.targets import like_for_like
from tests.support import write_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models"), size=64)


def test_sample_jpeg_is_photo_like() -> None:
    data = sample_jpeg("small")
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("JPEG", (640, 480))
    # Shading, edges and noise: far from the few KB a flat synthetic image compresses to.
    assert len(data) > 40_000
    assert jpeg_bytes(64, 48, seed=1) != jpeg_bytes(64, 48, seed=2)
    assert jpeg_bytes(64, 48, seed=1) == jpeg_bytes(64, 48, seed=1)


@pytest.mark.parametrize("url", ["http://192.0.2.1:8000", "http://[2001:db8::1]:80", "http://"])
def test_loadtest_refuses_non_loopback_targets(url: str) -> None:
    with pytest.raises(SystemExit):
        require_loopback(url)


def test_loadtest_accepts_loopback() -> None:
    require_loopback("http://127.0.0.1:8000")
    require_loopback("http://localhost:8000")


def test_check_answer_catches_wrong_masks() -> None:
    def png(size: tuple[int, int], mode: str) -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, format="PNG")
        return buffer.getvalue()

    assert check_answer(png((640, 480), "P"), "png", (640, 480)) is None
    assert "size" in check_answer(png((64, 64), "P"), "png", (640, 480))
    assert "mode" in check_answer(png((640, 480), "RGB"), "png", (640, 480))
    assert check_answer(b"not a png", "png", (640, 480)) is not None
    rle = {"width": 4, "height": 2, "masks": [{"area": 5}, {"area": 3}]}
    assert check_answer(json.dumps(rle).encode(), "rle", (4, 2)) is None
    assert "size" in check_answer(json.dumps(rle).encode(), "rle", (4, 3))
    rle["masks"] = [{"area": 5}]
    assert "sum" in check_answer(json.dumps(rle).encode(), "rle", (4, 2))


def test_loadtest_bounds_are_enforced() -> None:
    body = jpeg_bytes(64, 48)
    with pytest.raises(ValueError, match="duration"):
        run(LoadSpec(base_url="http://127.0.0.1:9", body=body, duration_s=10_000))
    with pytest.raises(ValueError, match="concurrency"):
        run(LoadSpec(base_url="http://127.0.0.1:9", body=body, concurrency=0))


def test_offline_runs_the_service_pipeline(tiny_model: Path) -> None:
    result = offline.run(tiny_model, "small", [1, 2], seconds=0.2, repeat=1)
    assert [b["batch_size"] for b in result["batches"]] == [1, 2]
    assert result["limit_images_per_s"] > 0
    stages = result["batches"][0]["stage_ms"]
    assert all(stages[k] > 0 for k in ("decode", "prepare", "infer", "encode"))
    assert result["single_image_ms"] == pytest.approx(sum(stages.values()))
    # One whole call at a time decodes, infers and encodes: never less than its decode alone.
    assert result["single_image_p50_ms"] >= stages["decode"]
    assert result["batches"][1]["lone_p50_ms"] is None  # measured at batch 1 only
    assert result["threads"]["worker_threads"] >= 1


def test_offline_in_processes_sums_them_and_times_the_lone_request_in_one(
    tiny_model: Path,
) -> None:
    result = offline.run_processes(2, tiny_model, "small", [1, 2], 0.2, 1, offline.PNG)
    assert result["processes"] == 2
    assert result["single_image_p50_ms"] is not None
    assert result["batches"][0]["lone_p50_ms"] == result["single_image_p50_ms"]
    assert result["limit_images_per_s"] == max(b["images_per_s"] for b in result["batches"])
    # A process that fails stops the run with an error instead of leaving it waiting.
    with pytest.raises(RuntimeError, match="offline process failed"):
        offline.run_processes(2, tiny_model, "small", [1], 0.2, 1, "not options")


def test_offline_pipeline_gives_the_models_answer(tiny_model: Path) -> None:
    # The tiny model calls pure red "red" (class 1): the encoded mask must say so everywhere.
    from service import pipeline
    from service.settings import Settings

    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (255, 0, 0)).save(buffer, format="PNG")

    async def segment() -> bytes:
        service, served = await offline.started(tiny_model, Settings())
        try:
            result = await pipeline.segment(
                service, served, buffer.getvalue(), offline.PNG, deadline=time.monotonic() + 10
            )
        finally:
            await service.close()
        return result.content

    mask = Image.open(io.BytesIO(asyncio.run(segment())))
    assert mask.size == (80, 60)
    assert np.all(np.asarray(mask) == 1)


@pytest.mark.parametrize(
    ("kind", "client"), [("segserve", "httpx"), ("segserve", "raw"), ("naive", "raw")]
)
def test_loadtest_closed_and_open_loop(
    kind: str, client: str, tiny_model: Path, tmp_path: Path
) -> None:
    body = sample_jpeg("small")
    with serve(kind, tiny_model, tmp_path / f"{kind}.log", ready_timeout_s=60) as server:
        closed = run(
            LoadSpec(
                base_url=server.base_url,
                body=body,
                concurrency=4,
                requests=24,
                duration_s=30,
                warmup_s=0.2,
                server_pid=server.pid,
                rss_every=8,
                check=5,
                progress=False,
                client=client,
            )
        )
        opened = run(
            LoadSpec(
                base_url=server.base_url,
                body=body,
                rate=40.0,
                requests=16,
                duration_s=30,
                warmup_s=0.0,
                check=5,
                progress=False,
                client=client,
                multipart=kind == "segserve",
            )
        )
    assert (closed.requests, closed.ok, closed.status_counts) == (24, 24, {"200": 24})
    assert closed.checked == 5
    assert closed.check_failures == []
    assert closed.latency_ms["p50"] <= closed.latency_ms["p99"] <= closed.latency_ms["max"]
    assert {"start", "8", "16", "24", "end"} <= closed.server_rss_mb.keys()
    assert closed.server_cpu_cores is not None
    assert closed.server_cpu_cores > 0
    assert (opened.mode, opened.ok, opened.check_failures) == ("open", 16, [])
    # Timed from the actual send, a request takes no longer than from its scheduled time.
    late, from_send = opened.send_lateness_ms, opened.latency_from_send_by_status_ms["200"]
    assert 0 <= late["p50"] <= late["max"]
    assert from_send["max"] <= opened.latency_by_status_ms["200"]["max"]
    assert from_send["mean"] == pytest.approx(
        opened.latency_by_status_ms["200"]["mean"] - late["mean"], abs=1e-6
    )


def test_sweep_draws_latency_against_throughput(tiny_model: Path, tmp_path: Path) -> None:
    offline_json = tmp_path / "offline.json"
    offline_json.write_text(json.dumps({"limit_images_per_s": 500.0}))
    png = tmp_path / "sweep.png"
    sweep.main(
        [
            "--model",
            str(tiny_model),
            "--servers",
            "naive",
            "--concurrency",
            "1,2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--offline-json",
            str(offline_json),
            "--out",
            str(tmp_path / "out"),
            "--png",
            str(png),
        ]
    )
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["results"]["naive"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    assert all(r["ok"] > 0 for r in rows)
    assert Image.open(png).size[0] > 400


def test_levers_argmax_folding_matches_numpy(tiny_model: Path) -> None:
    import onnx
    import onnxruntime as ort

    from bench.levers import with_argmax

    proto = onnx.load(tiny_model)
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    plain = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    folded = ort.InferenceSession(
        with_argmax(proto).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    logits = plain.run(None, {"input": x})[0]
    labels = folded.run(None, {"input": x})[0]
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))


def test_like_for_like_takes_the_offline_cpu_at_the_servers_batch_size() -> None:
    batches = [
        {"batch_size": 1, "images_per_s": 400.0, "cpu_ms_per_image": 3.4},
        {"batch_size": 8, "images_per_s": 450.0, "cpu_ms_per_image": 3.0},
        {"batch_size": 16, "images_per_s": 500.0, "cpu_ms_per_image": 2.9},
    ]
    in_process = {
        "limit_images_per_s": 500.0,
        "single_image_ms": 2.0,
        "single_image_p50_ms": 2.5,
        "batches": batches,
    }
    c32 = {"server_cpu_ms_per_request": 3.2, "throughput_rps": 450.0}
    c1 = {"latency_ms": {"p50": 2.6}}
    same = like_for_like(c32, c1, in_process, batch_size=8)
    assert same["offline_batch_size"] == 8
    assert same["cpu_ratio"] == pytest.approx(3.0 / 3.2)
    assert same["throughput_ratio"] == pytest.approx(0.9)
    assert same["c1_ratio"] == pytest.approx(1.3)
    assert same["c1_ratio_to_lone_p50"] == pytest.approx(2.6 / 2.5)
    # A batch size the offline run did not measure: its best batch instead.
    assert like_for_like(c32, c1, in_process, batch_size=4)["offline_batch_size"] == 16


def test_main_thread_cpu_is_part_of_the_process_cpu() -> None:
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn a little CPU on this (the main) thread
        pass
    main_thread = procstat.main_thread_cpu_seconds(os.getpid())
    assert 0 < main_thread <= procstat.cpu_seconds(os.getpid())


def test_pipeline_section_compares_two_trees(tiny_model: Path, tmp_path: Path) -> None:
    # The same tree on both sides: a verdict whose ratio is near 1, so the 30 % cut is not met.
    (verdict,), _ = sections.pipeline_section(tiny_model, Path.cwd(), tmp_path)
    assert not verdict.met
    assert (tmp_path / "offline-base.json").is_file()
    assert (tmp_path / "offline-now.json").is_file()
    assert sections.pipeline_section(tiny_model, None, tmp_path)[0] == []
    (floor,) = sections.decode_floor_lines(c1_large_p50_ms=1000.0)
    assert "1/8 scale" in floor


def test_edge_times_the_http_layer_around_a_stand_in_pipeline() -> None:
    # Its own interpreter (it replaces service.pipeline.segment there); the first request must
    # answer 200 through the real app before anything is timed.
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-P", str(root / "bench" / "edge.py"), "--measure", "--requests", "20",
         "--repeat", "2"],
        cwd=root, env=os.environ | {"PYTHONPATH": str(root)}, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert len(result["timings_ms"]) == 2
    assert result["edge_cpu_ms"] == min(result["timings_ms"]) > 0


def test_variant_serves_with_its_lever_flipped(tiny_model: Path, tmp_path: Path) -> None:
    flags = ["--loop", "asyncio", "--http", "h11", "--switch-interval", "1", "--gc-off"]
    with serve("segserve", tiny_model, tmp_path / "variant.log", variant=flags) as server:
        answer = httpx.post(
            f"{server.base_url}/segment",
            content=sample_jpeg("small"),
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"


def test_overload_keeps_its_budget_under_other_server_settings() -> None:
    layout = overload.parse(["--server-set=SEGSERVE_PROCESSES=2"])
    assert overload.server_settings(layout) == {
        "SEGSERVE_MAX_QUEUE_WAIT_MS": "100",
        "SEGSERVE_PROCESSES": "2",
    }
    off = overload.parse(["--server-set=SEGSERVE_MAX_QUEUE_WAIT_MS=0"])
    assert overload.server_settings(off) == {"SEGSERVE_MAX_QUEUE_WAIT_MS": "0"}


def test_overload_measures_capacity_without_the_budget_and_the_levels_with_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A budget of 1 ms refuses whenever two requests overlap: the closed loop that measures
    capacity must not see it (its clients would send each refusal again at once), the open-loop
    levels must."""
    args = overload.parse(
        [
            f"--model={tiny_model}",
            f"--out={tmp_path}",
            "--duration=0.5",
            "--server-set=SEGSERVE_MAX_QUEUE_WAIT_MS=1",
        ]
    )
    measured = overload.measure(args)
    capacity_run = json.loads((tmp_path / "closed-c32.json").read_text())
    assert capacity_run["status_counts"].keys() == {"200"}
    assert measured.capacity_rps == pytest.approx(capacity_run["throughput_rps"])
    assert [level.share for level in measured.levels] == list(overload.SHARES)
    assert sum(level.refused_rps for level in measured.levels) > 0
    for level in measured.levels:
        assert 0 < level.served <= level.sent


def test_overload_judges_the_requests_sent_not_the_nominal_rate() -> None:
    def measured(served_at_80: int) -> overload.Measured:
        levels = [
            overload.Level(
                share,
                100.0 * share,
                780,
                served_at_80 if share == 0.8 else 780,
                97.5 * share,
                0.0,
                10.0,
                20.0,
                None,
            )
            for share in overload.SHARES
        ]
        return overload.Measured(capacity_rps=100.0, lone_p50_ms=3.0, levels=levels)

    # 780 requests sent in 8 s at a nominal 80 req/s: 2.5 % fewer arrivals than the mean
    served = {v.name: v.met for v in overload.judge(measured(780))}
    assert served["80 %: offered load served"]
    short = {v.name: v.met for v in overload.judge(measured(760))}
    assert not short["80 %: offered load served"]


def test_policies_reports_the_model_under_its_own_policy_against_its_in_process_limit() -> None:
    measured = policies.Measured(
        offline={}, served={}, rss_bytes=[], lone_default={}, lone_today={},
        offline_own={"limit_images_per_s": 200.0, "limit_batch_size": 4},
        served_own={"throughput_rps": 180.0, "latency_ms": {"p50": 150.0}},
    )  # fmt: skip
    line = policies.own_policy_line(measured)
    assert "180.0 req/s = 0.90 x its in-process limit (200.0 img/s at batch 4)" in line
    assert "p50 150.0 ms" in line
