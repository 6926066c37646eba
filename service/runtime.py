"""ONNX Runtime: which execution provider, how sessions are configured, and the session pool.

Provider choice (``SEGSERVE_PROVIDER``):
- ``cpu``: the CPU provider.
- ``cuda`` / ``tensorrt``: that provider or a ``ModelLoadError`` (never a silent CPU fallback:
  someone who asked for a GPU wants to know they did not get one).
- ``auto``: CUDA only when this ONNX Runtime build lists it *and* a session really comes up with it
  first; otherwise CPU. On a CPU build CUDA is never tried, so nothing is logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import resampling
from service.errors import ModelLoadError
from service.masks import resize_labels
from service.model_card import ModelCard
from service.repository import ModelVersion
from service.settings import Provider, Settings
from service.signature import Signature, Tensor, check_tensors
from service.threads import WorkerThreads

log = logging.getLogger("segserve.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DISPLAY_NAMES = {CPU: "CPU", CUDA: "CUDA", TENSORRT: "TensorRT"}

ProviderSpec = str | tuple[str, dict[str, str]]
_ORT_TO_NUMPY = {"float": "float32", "double": "float64"}  # the rest share a name


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way to create a session: the providers to pass, and which one must end up first."""

    providers: tuple[ProviderSpec, ...]
    expect: str
    required: bool  # False: on failure, quietly try the next attempt


def plan_providers(
    requested: Provider, available: list[str], *, trt_cache_dir: Path, trt_fp16: bool
) -> list[Attempt]:
    """The session attempts for ``requested`` given ``ort.get_available_providers()``."""
    if requested == "cpu":
        return [Attempt((CPU,), CPU, required=True)]
    if requested in ("cuda", "tensorrt"):
        wanted = CUDA if requested == "cuda" else TENSORRT
        if wanted not in available:
            raise ModelLoadError(
                f"SEGSERVE_PROVIDER={requested} but this ONNX Runtime build has no {wanted} "
                f"(available: {', '.join(available)}); install onnxruntime-gpu "
                "(`make serve ORT=gpu`) or set SEGSERVE_PROVIDER=auto"
            )
        if requested == "cuda":
            return [Attempt((CUDA, CPU), CUDA, required=True)]
        trt_options = {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(trt_cache_dir),
            "trt_fp16_enable": str(trt_fp16),
        }
        # Nodes TensorRT cannot take run on CUDA, then CPU.
        return [Attempt(((TENSORRT, trt_options), CUDA, CPU), TENSORRT, required=True)]
    attempts = [Attempt((CUDA, CPU), CUDA, required=False)] if CUDA in available else []
    return [*attempts, Attempt((CPU,), CPU, required=True)]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0"
    )
    # One graph per request batch, run start to end: parallelism comes from batches and sessions.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: provider probing must not spam the log
    return options


def open_session(
    path: Path, settings: Settings, *, available: list[str] | None = None
) -> ort.InferenceSession:
    """Create a session on the provider ``settings.provider`` resolves to (see module doc)."""
    ort.set_default_logger_severity(3)  # ORT's own (non-JSON) stderr lines: errors only
    if settings.provider == "tensorrt":
        settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    attempts = plan_providers(
        settings.provider,
        ort.get_available_providers() if available is None else available,
        trt_cache_dir=settings.trt_cache_dir,
        trt_fp16=settings.trt_fp16,
    )
    for attempt in attempts:
        wanted = DISPLAY_NAMES[attempt.expect]
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options(settings), providers=list(attempt.providers)
            )
        except Exception as exc:  # ORT raises its own pybind exception types
            if attempt.required:
                raise ModelLoadError(f"cannot load {path} on {wanted}: {exc}") from exc
            log.info("%s session for %s failed (%s); using the next provider", wanted, path, exc)
            continue
        got = session.get_providers()[0]
        if got == attempt.expect:
            return session
        if attempt.required:
            raise ModelLoadError(
                f"asked for {wanted} for {path} but ONNX Runtime gave {DISPLAY_NAMES.get(got, got)}"
                " (check the CUDA/cuDNN/TensorRT libraries)"
            )
        log.info("%s not usable for %s (session came up on %s); using CPU", wanted, path, got)
    raise AssertionError("the last attempt is always required")  # pragma: no cover


def check_session(session: ort.InferenceSession, card: ModelCard, path: Path) -> Signature:
    """Refuse a model whose tensors do not match its card, at load rather than per request."""
    return check_tensors(
        _tensors(session.get_inputs()), _tensors(session.get_outputs()), card, path
    )


def _tensors(args: list[ort.NodeArg]) -> list[Tensor]:
    # ONNX Runtime spells element types "tensor(float)"; a dimension it cannot name is None.
    return [
        Tensor(a.name, _numpy_dtype(a.type), tuple("?" if d is None else d for d in a.shape))
        for a in args
    ]


def _numpy_dtype(ort_type: str) -> str:
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_TO_NUMPY.get(name, name)


class Runner:
    """One session; ``run`` turns an input batch (N, 3, H, W) into uint8 labels (N, H, W), or into
    float scores (N, classes, H, W) for blending overlapping tiles: at the input's size whatever
    the size of the model's output. One thread each."""

    def __init__(
        self, session: ort.InferenceSession, card: ModelCard, *, io_binding: bool | None = None
    ) -> None:
        self.session = session
        self.provider = session.get_providers()[0]
        graph_input = session.get_inputs()[0]
        self._input = graph_input.name
        self._output = card.output.name or session.get_outputs()[0].name
        self._logits = card.output.kind == "logits"
        self._classes = card.num_classes
        self._nhwc = card.input.layout == "NHWC"
        height, width = graph_input.shape[1:3] if self._nhwc else graph_input.shape[2:]
        # A fully convolutional graph exported with symbolic height and width takes any size.
        self.any_size = not isinstance(height, int) and not isinstance(width, int)
        self.input_size = (card.input.height, card.input.width)
        # On a GPU, bind input and output: one host->device copy per batch, output lands on CPU.
        if io_binding is None:
            io_binding = self.provider != CPU
        self._binding = session.io_binding() if io_binding else None

    def run(self, batch: np.ndarray, *, scores: bool = False) -> np.ndarray:
        out = self._forward(self._feed(batch))
        size = (batch.shape[2], batch.shape[3])
        if not self._logits:
            labels = _at_size(as_labels(out), size)
            return one_hot(labels, self._classes) if scores else labels
        if out.shape[2:] == size:
            # Only uint8 labels move on: argmax right after inference when the model gives logits.
            return out if scores else class_argmax(out)
        if scores:
            return resampling.scale_scores(out, size)
        return resampling.scaled_argmax(out, class_argmax(out), size)

    def _feed(self, batch: np.ndarray) -> np.ndarray:
        """The batch as the graph takes it: transposed for a channels-last graph (one copy, here
        rather than in each input policy's preparation)."""
        return np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if self._nhwc else batch

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self._binding is None:
            (out,) = self.session.run([self._output], {self._input: batch})
        else:
            self._binding.bind_cpu_input(self._input, batch)
            self._binding.bind_output(self._output, "cpu")
            self.session.run_with_iobinding(self._binding)
            out = self._binding.copy_outputs_to_cpu()[0]
        return out


def as_labels(out: np.ndarray) -> np.ndarray:
    """A labels output, (N, h, w) or (N, 1, h, w) of any integer type, as uint8 (N, h, w).
    Raises ValueError for a class id outside 0..255, which no card can name."""
    labels = out[:, 0] if out.ndim == 4 else out
    if labels.dtype == np.uint8:
        return labels
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 255:
        raise ValueError(f"the model returned class ids from {low} to {high}; ids are 0..255")
    return labels.astype(np.uint8)


def _at_size(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) labels scaled to ``size`` (H, W) by nearest neighbour, as masks are."""
    if labels.shape[1:] == size:
        return labels
    return np.stack([resize_labels(image, (size[1], size[0])) for image in labels])


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """(N, h, w) labels as (N, classes, h, w) float32 scores: 1 for the label, 0 elsewhere."""
    return (labels[:, None] == np.arange(classes).reshape(1, -1, 1, 1)).astype(np.float32)


def class_argmax(logits: np.ndarray) -> np.ndarray:
    """``logits.argmax(axis=1).astype(np.uint8)`` for (N, classes, h, w) scores, ~9x faster.

    NumPy's argmax over an axis that is not the last first copies the scores into a contiguous
    transposed array (0.3 ms per 5 x 128 x 128 image, a fifth of inference); one pass per class
    plane keeps the running best instead. Ties go to the first class, as with NumPy; NaN scores
    (a broken model) fall back to NumPy, so that case answers exactly as before too.
    """
    best = logits[:, 0].copy()
    labels = np.zeros(best.shape, np.uint8)
    better = np.empty(best.shape, np.bool_)
    for k in range(1, logits.shape[1]):
        plane = logits[:, k]
        np.greater(plane, best, out=better)
        flag = better.view(np.uint8)
        labels += flag * np.uint8(k) - flag * labels  # = k where class k scores higher
        np.maximum(best, plane, out=best)
    if np.isnan(best).any():  # np.maximum carries a NaN of any class into best
        return logits.argmax(axis=1).astype(np.uint8)
    return labels


class SessionPool:
    """``size`` sessions of one model, each with its own thread; ``run`` takes an idle one."""

    def __init__(self, runners: list[Runner], name: str) -> None:
        self.name = name
        self._idle = deque(runners)
        self._free = asyncio.Semaphore(len(runners))
        self._threads = WorkerThreads(len(runners), f"ort-{name}")
        self.size = len(runners)
        self.provider = DISPLAY_NAMES.get(runners[0].provider, runners[0].provider)
        self.any_size = runners[0].any_size
        self.input_height, self.input_width = runners[0].input_size

    async def run(self, batch: np.ndarray, *, scores: bool = False) -> np.ndarray:
        async with self._free:
            runner = self._idle.popleft()
            try:
                return await self._threads.run(runner.run, batch, scores=scores)
            finally:
                self._idle.append(runner)

    def warm_up(self, batch: np.ndarray) -> None:
        """Run ``batch`` through every session (blocking): first-run allocations and kernel
        selection happen here, not in a client's request."""
        for runner in self._idle:
            runner.run(batch)

    def close(self) -> None:
        self._threads.shutdown()


def load_model(model: ModelVersion, settings: Settings) -> tuple[ModelCard, SessionPool]:
    """Open ``settings.sessions`` sessions of ``model`` and read its card (blocking: start-up).

    Raises ModelLoadError for a corrupt file, a missing or invalid card, tensors that do not
    match the card, or a provider that cannot be had.
    """
    first = open_session(model.path, settings)
    card = ModelCard.from_metadata(first.get_modelmeta().custom_metadata_map, model.path)
    sessions = [first] + [open_session(model.path, settings) for _ in range(settings.sessions - 1)]
    for session in sessions:
        check_session(session, card, model.path)
    return card, SessionPool([Runner(s, card) for s in sessions], model.key)
