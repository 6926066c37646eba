"""ONNX Runtime: provider selection (with the real CPU build), session options, the pool."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from service.errors import ModelLoadError
from service.model_card import METADATA_KEY, ClassInfo, InputSpec, ModelCard, OutputSpec
from service.providers import (
    CPU,
    CUDA,
    TENSORRT,
    Attempt,
    EngineProfile,
    GpuTarget,
    engine_profile,
    plan_providers,
)
from service.repository import ModelVersion
from service.resampling import scale_scores
from service.runtime import (
    Runner,
    check_session,
    class_argmax,
    load_model,
    open_session,
    session_options,
)
from service.settings import Provider, Settings
from tests import graphs
from tests.support import (
    expected_labels,
    expected_scores,
    tiny_card,
    tiny_model,
    write_tiny_model,
)

GPU_BUILD = [TENSORRT, CUDA, CPU]


GPU_SETTINGS = Settings(trt_cache_dir=Path("/cache"), trt_fp16=True)
HEURISTIC = {"cudnn_conv_algo_search": "HEURISTIC"}


def plan(requested: Provider, available: list[str], gpu: GpuTarget | None = None) -> list[Attempt]:
    return plan_providers(GPU_SETTINGS.model_copy(update={"provider": requested}), available, gpu)


# -- the plan --------------------------------------------------------------------------------------
def test_cpu_is_cpu_whatever_the_build() -> None:
    for available in ([CPU], GPU_BUILD):
        (attempt,) = plan("cpu", available)
        assert (attempt.providers, attempt.expect, attempt.required) == ((CPU,), CPU, True)


def test_auto_on_a_cpu_build_never_tries_cuda() -> None:
    (attempt,) = plan("auto", ["AzureExecutionProvider", CPU])
    assert attempt.providers == (CPU,)


def test_auto_on_a_gpu_build_tries_cuda_then_falls_back_to_cpu() -> None:
    first, second = plan("auto", GPU_BUILD)
    assert (first.providers, first.expect, first.required) == (
        ((CUDA, HEURISTIC), CPU),
        CUDA,
        False,
    )
    assert (second.providers, second.required) == ((CPU,), True)


def test_explicit_gpu_providers_are_required() -> None:
    (cuda,) = plan("cuda", GPU_BUILD)
    assert (cuda.providers, cuda.expect, cuda.required) == (((CUDA, HEURISTIC), CPU), CUDA, True)
    profile = EngineProfile("input", (1, 3, 64, 64), (8, 3, 512, 512), (8, 3, 640, 640))
    (trt,) = plan("tensorrt", GPU_BUILD, GpuTarget(Path("/cache/m/3"), profile))
    assert trt.expect == TENSORRT
    assert trt.required
    (name, options), *fallbacks = trt.providers
    assert name == TENSORRT
    assert fallbacks == [(CUDA, HEURISTIC), CPU]
    assert options == {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/cache/m/3",  # engines per model version
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": "/cache",  # kernel timings shared by all
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": "input:1x3x64x64",
        "trt_profile_opt_shapes": "input:8x3x512x512",
        "trt_profile_max_shapes": "input:8x3x640x640",
    }


def test_the_cudnn_algorithm_search_is_a_setting() -> None:
    settings = Settings(provider="cuda", cudnn_conv_algo_search="EXHAUSTIVE")
    (cuda,) = plan_providers(settings, GPU_BUILD)
    assert cuda.providers[0] == (CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"})


def test_an_any_size_model_s_engine_covers_every_shape_its_default_policies_make() -> None:
    spec = InputSpec(height=512, width=512, resize="native", max_side=600)
    profile = engine_profile("x", spec, any_size=True, max_batch=8)
    # native buckets from 32 px up to 600 rounded up to a bucket (608); 512-px tiles; batch 1..8
    assert (profile.min, profile.opt, profile.max) == (
        (1, 3, 32, 32),
        (8, 3, 512, 512),
        (8, 3, 608, 608),
    )
    tiles = InputSpec(height=256, width=256, resize="tiles", tile=1024, stride=16)
    assert engine_profile("x", tiles, any_size=True, max_batch=4).max == (4, 3, 1024, 1024)
    nhwc = InputSpec(height=96, width=128, layout="NHWC", stride=48, max_side=100)
    profile = engine_profile("pixels", nhwc, any_size=True, max_batch=2)
    assert (profile.min, profile.max) == ((1, 48, 48, 3), (2, 144, 144, 3))  # buckets of 48
    assert profile.options()["trt_profile_max_shapes"] == "pixels:2x144x144x3"


def test_a_fixed_size_model_s_engine_varies_only_the_batch() -> None:
    spec = InputSpec(height=128, width=160)
    profile = engine_profile("input", spec, any_size=False, max_batch=16)
    assert (profile.min, profile.opt, profile.max) == (
        (1, 3, 128, 160),
        (16, 3, 128, 160),
        (16, 3, 128, 160),
    )


@pytest.mark.parametrize("requested", ["cuda", "tensorrt"])
def test_explicit_gpu_provider_missing_from_the_build_is_a_clear_error(requested: str) -> None:
    with pytest.raises(ModelLoadError, match=f"SEGSERVE_PROVIDER={requested}.*onnxruntime-gpu"):
        plan(requested, [CPU])


# -- real sessions on this CPU build ---------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("repo"), "tiny", 1, size=8)


def test_auto_on_this_machine_is_cpu_without_error_logs(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="segserve"):
        session = open_session(model_path, Settings(provider="auto"))
    assert session.get_providers()[0] == CPU
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_auto_falls_back_when_a_listed_cuda_does_not_come_up(model_path: Path) -> None:
    # The build claims CUDA but no session can get it (as on a GPU build without a GPU):
    # ONNX Runtime silently gives CPU, and auto must accept that quietly.
    session = open_session(model_path, Settings(provider="auto"), available=[CUDA, CPU])
    assert session.get_providers()[0] == CPU


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_explicit_cuda_that_does_not_come_up_is_an_error(model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"asked for CUDA .* gave CPU"):
        open_session(model_path, Settings(provider="cuda"), available=[CUDA, CPU])


def test_loading_for_tensorrt_on_this_cpu_build_is_a_clear_error(
    model_path: Path, tmp_path: Path
) -> None:
    model = ModelVersion("tiny", 1, model_path)
    settings = Settings(provider="tensorrt", trt_cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"no TensorrtExecutionProvider.*onnxruntime-gpu"):
        load_model(model, settings)


def test_explicit_cuda_on_this_cpu_build_is_an_error(model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no CUDAExecutionProvider"):
        open_session(model_path, Settings(provider="cuda"))


def test_session_options_follow_the_settings() -> None:
    options = session_options(Settings(intra_op_threads=3))
    assert options.intra_op_num_threads == 3
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(Settings(intra_op_spinning=True))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_a_corrupt_file_is_a_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07 this is not protobuf")
    with pytest.raises(ModelLoadError, match="cannot load"):
        open_session(path, Settings(provider="cpu"))


# -- runners, cards and the pool -------------------------------------------------------------------
@pytest.mark.parametrize("output", ["logits", "labels"])
def test_runner_returns_uint8_labels_for_both_output_kinds(tmp_path: Path, output: str) -> None:
    path = write_tiny_model(tmp_path, "tiny", 1, size=8, output=output)
    card, pool = load_model(ModelVersion("tiny", 1, path), Settings(provider="cpu"))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    batch = (pixels / 255).astype(np.float32).transpose(0, 3, 1, 2).copy()
    labels = asyncio.run(pool.run(batch))
    pool.close()
    assert card.output.kind == output
    assert labels.dtype == np.uint8
    assert labels.shape == (3, 8, 8)
    for image, got in zip(pixels, labels, strict=True):
        np.testing.assert_array_equal(got, expected_labels(image))


def test_io_binding_gives_the_same_labels_as_plain_run(model_path: Path) -> None:
    # The GPU path (IO binding, output bound to CPU) exercised on the CPU provider.
    session = open_session(model_path, Settings(provider="cpu"))
    card = tiny_card(size=8)
    batch = np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)
    bound = Runner(session, card, io_binding=True)
    plain = Runner(session, card, io_binding=False)
    for _ in range(2):  # the binding is reused from one batch to the next
        np.testing.assert_array_equal(bound.run(batch), plain.run(batch))
    np.testing.assert_array_equal(bound.run(batch[:1]), plain.run(batch[:1]))


@pytest.mark.parametrize("io_binding", [True, False, None])
def test_the_io_binding_setting_reaches_every_runner(model_path: Path, io_binding: bool) -> None:
    settings = Settings(provider="cpu", sessions=2, io_binding=io_binding)
    _, pool = load_model(ModelVersion("tiny", 1, model_path), settings)
    bound = [runner._binding is not None for runner in pool._idle]
    assert bound == [bool(io_binding)] * 2  # unset: off on the CPU


def test_pool_has_the_configured_sessions_and_runs_them_concurrently(model_path: Path) -> None:
    _, pool = load_model(ModelVersion("tiny", 1, model_path), Settings(provider="cpu", sessions=3))
    assert (pool.size, pool.provider) == (3, "CPU")
    batch = np.zeros((2, 3, 8, 8), np.float32)

    async def many() -> list[np.ndarray]:
        return await asyncio.gather(*(pool.run(batch) for _ in range(12)))

    results = asyncio.run(many())
    pool.close()
    assert all(r.shape == (2, 8, 8) and not r.any() for r in results)  # black is background


def test_a_model_without_a_card_is_refused(tmp_path: Path) -> None:
    model = tiny_model(tiny_card(size=8))
    del model.metadata_props[:]
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match=f"no '{METADATA_KEY}'"):
        load_model(ModelVersion("bare", 1, path), Settings(provider="cpu"))


def test_a_card_that_does_not_match_the_tensors_is_refused(model_path: Path) -> None:
    session = open_session(model_path, Settings(provider="cpu"))
    with pytest.raises(ModelLoadError, match="does not match the card"):
        check_session(session, tiny_card(size=16), model_path)
    with pytest.raises(ModelLoadError, match=r"holds logits .* but the card says labels"):
        check_session(session, tiny_card(size=8, output="labels"), model_path)
    four_classes = tiny_card(size=8).model_copy(
        update={"classes": [*tiny_card().classes, ClassInfo(id=3, label="blue", color=(0, 0, 128))]}
    )
    with pytest.raises(ModelLoadError, match="scores 3 classes, the card lists 4"):
        check_session(session, four_classes, model_path)
    check_session(session, tiny_card(size=8), model_path)
    assert Runner(session, tiny_card(size=8)).provider == CPU


@settings(max_examples=300, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 9), st.integers(1, 9)),
    dtype=st.sampled_from([np.float32, np.float16]),
    data=st.data(),
)
def test_class_argmax_equals_numpy_argmax(shape, dtype, data) -> None:
    # Few distinct values force ties (first class wins); infinities and NaN are broken models.
    values = st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 1.0, np.inf, np.nan])
    flat = data.draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    logits = np.array(flat, dtype=dtype).reshape(shape)
    expected = logits.argmax(axis=1).astype(np.uint8)
    np.testing.assert_array_equal(class_argmax(logits), expected)


# -- graphs as other tools export them (tests/graphs.py) ---------------------------------------
def _runner(model: onnx.ModelProto, card: ModelCard, **options: bool) -> Runner:
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    check_session(session, card, Path("model.onnx"))
    return Runner(session, card, **options)


def _pixels(n: int, height: int, width: int) -> np.ndarray:
    """Black, white and primary-coloured pixels: the tiny classifier never ties on them."""
    rng = np.random.default_rng(height * width)
    return rng.choice([0, 255], size=(n, height, width, 3)).astype(np.uint8)


def _batch(pixels: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    return (pixels.transpose(0, 3, 1, 2) / 255).astype(dtype)


def _expected(pixels: np.ndarray) -> np.ndarray:
    return np.stack([expected_labels(image) for image in pixels])


def test_a_channels_last_uint8_graph_is_fed_the_prepared_pixels_transposed() -> None:
    card = tiny_card(size=8).model_copy(
        update={"input": InputSpec(height=8, width=8, layout="NHWC", dtype="uint8")}
    )
    pixels = _pixels(3, 8, 8)
    runner = _runner(graphs.nhwc_pixels(), card)
    np.testing.assert_array_equal(
        runner.run(pixels.transpose(0, 3, 1, 2).copy()), _expected(pixels)
    )


def test_integer_labels_of_any_type_are_served_as_uint8() -> None:
    pixels = _pixels(2, 8, 8)
    for io_binding in (False, True):
        runner = _runner(
            graphs.argmax_int64(), tiny_card(size=8, output="labels"), io_binding=io_binding
        )
        labels = runner.run(_batch(pixels))
        assert (labels.dtype, labels.shape) == (np.uint8, (2, 8, 8))
        np.testing.assert_array_equal(labels, _expected(pixels))


def test_class_ids_beyond_255_fail_the_batch() -> None:
    model = graphs.argmax_int64()
    model.graph.node.append(helper.make_node("Add", ["labels", "offset"], ["shifted"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array(300, np.int64), "offset"))
    model.graph.output[0].name = "shifted"
    runner = _runner(model, tiny_card(size=8, output="labels"))
    with pytest.raises(ValueError, match=r"class ids from 300 to 30[0-2]; ids are 0\.\.255"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))


def test_the_card_chooses_which_output_is_served() -> None:
    pixels = _pixels(1, 8, 8)
    card = tiny_card(size=8).model_copy(update={"output": OutputSpec(name="aux")})
    for io_binding in (False, True):
        runner = _runner(graphs.two_outputs(), card, io_binding=io_binding)
        scores = runner.run(_batch(pixels), scores=True)
        np.testing.assert_array_equal(scores[0], -expected_scores(pixels[0]))


def test_half_precision_graphs_answer_in_half_and_label_as_full_precision() -> None:
    card = tiny_card(size=8).model_copy(
        update={"input": InputSpec(height=8, width=8, dtype="float16")}
    )
    pixels = _pixels(2, 8, 8)
    runner = _runner(graphs.half(), card)
    np.testing.assert_array_equal(runner.run(_batch(pixels, np.float16)), _expected(pixels))
    assert runner.run(_batch(pixels, np.float16), scores=True).dtype == np.float16


def test_a_reduced_resolution_output_is_scaled_to_the_input_size() -> None:
    pixels = _pixels(2, 24, 40)
    batch = _batch(pixels)
    raw = graphs.strided_scores(batch)  # (2, 3, 6, 10), computed in NumPy
    for io_binding in (False, True):
        runner = _runner(graphs.strided(), tiny_card(size=24), io_binding=io_binding)
        scores = runner.run(batch, scores=True)
        assert scores.shape == (2, 3, 24, 40)
        np.testing.assert_allclose(scores, scale_scores(raw, (24, 40)), atol=1e-6)
        labels = runner.run(batch)
        assert labels.shape == (2, 24, 40)
        np.testing.assert_array_equal(labels, scores.argmax(axis=1))


def test_reduced_resolution_labels_are_scaled_by_nearest_neighbour() -> None:
    model = graphs.strided()
    model.graph.node.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "h", "w"])
    )
    batch = _batch(_pixels(1, 16, 8))
    coarse = graphs.strided_scores(batch).argmax(axis=1)[0]  # (4, 2)
    labels = _runner(model, tiny_card(size=16, output="labels")).run(batch)
    np.testing.assert_array_equal(labels[0], np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1))
