"""ONNX Runtime: how sessions are opened (on the providers ``service.providers`` plans) and
configured, the runner that turns a batch into labels or scores, and the session pool."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import resampling
from service.errors import ModelLoadError
from service.masks import resize_labels
from service.model_card import ModelCard
from service.providers import (
    CPU,
    DISPLAY_NAMES,
    GpuTarget,
    engine_profile,
    plan_providers,
)
from service.repository import ModelVersion
from service.resampling import class_argmax
from service.settings import Settings
from service.signature import Signature, SignatureError, Tensor, check_tensors, mask_stride
from service.threads import WorkerThreads, lower_this_thread

log = logging.getLogger("segserve.runtime")

_ORT_TO_NUMPY = {"float": "float32", "double": "float64"}  # the rest share a name


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
    path: Path,
    settings: Settings,
    *,
    available: list[str] | None = None,
    gpu: GpuTarget | None = None,
) -> ort.InferenceSession:
    """Create a session on the provider ``settings.provider`` resolves to
    (``service.providers``); ``gpu``: the model version's TensorRT cache and profile."""
    ort.set_default_logger_severity(3)  # ORT's own (non-JSON) stderr lines: errors only
    if settings.provider == "tensorrt":
        GpuTarget.of(settings, gpu).cache_dir.mkdir(parents=True, exist_ok=True)
    attempts = plan_providers(
        settings, ort.get_available_providers() if available is None else available, gpu
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


def takes_any_size(graph_input: ort.NodeArg, card: ModelCard) -> bool:
    """A fully convolutional graph exported with symbolic height and width takes any size."""
    shape = graph_input.shape
    height, width = shape[1:3] if card.input.layout == "NHWC" else shape[2:]
    return not isinstance(height, int) and not isinstance(width, int)


def fixed_batch(graph_input: ort.NodeArg) -> int | None:
    """The batch size a graph exported without a dynamic batch dimension takes (None: any;
    ``service.signature`` refuses one other than 1)."""
    batch = graph_input.shape[0]
    return batch if isinstance(batch, int) else None


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
        self.any_size = takes_any_size(graph_input, card)
        self.batch_limit = fixed_batch(graph_input)
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

    def check_output(self, batch: np.ndarray) -> None:
        """Raise SignatureError unless the raw output for ``batch`` is one mask per image at
        the input's size or a whole fraction of it (the graph's shapes may be symbolic, so only
        a run tells)."""
        out = self._forward(self._feed(batch))
        size = (batch.shape[2], batch.shape[3])
        if out.shape[0] != batch.shape[0]:
            raise SignatureError(
                f"{self._output}: a batch of {batch.shape[0]} gave an output of shape {out.shape}"
            )
        mask_stride(size, (out.shape[-2], out.shape[-1]))

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


class SessionPool:
    """``size`` sessions of one model, each with its own thread; ``run`` takes an idle one."""

    def __init__(self, runners: list[Runner], name: str, nice: int = 0) -> None:
        self.name = name
        self._idle = deque(runners)
        self._free = asyncio.Semaphore(len(runners))
        self._threads = WorkerThreads(len(runners), f"ort-{name}", nice)
        self.size = len(runners)
        self.provider = DISPLAY_NAMES.get(runners[0].provider, runners[0].provider)
        self.any_size = runners[0].any_size
        self.batch_limit = runners[0].batch_limit  # a graph that takes one image at a time: 1
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
        selection happen here, not in a client's request. Raises ModelLoadError when a run
        fails or its output is not a mask of the input (``signature.mask_stride``)."""
        for runner in self._idle:
            try:
                runner.check_output(batch)
                runner.run(batch)
            except SignatureError as exc:
                raise ModelLoadError(f"{self.name}: {exc}") from exc
            except Exception as exc:  # ORT's own exception types, a bad class id, ...
                raise ModelLoadError(f"{self.name}: the warm-up batch failed: {exc}") from exc

    def close(self) -> None:
        self._threads.shutdown()


def load_model(model: ModelVersion, settings: Settings) -> tuple[ModelCard, SessionPool]:
    """Open ``settings.sessions`` sessions of ``model`` and read its card (blocking: start-up).

    Raises ModelLoadError for a corrupt file, a missing or invalid card, tensors that do not
    match the card, or a provider that cannot be had.
    """
    # ONNX Runtime's intra-op threads start with the session, at this thread's priority.
    lower_this_thread(settings.worker_nice)
    if settings.provider == "tensorrt":
        return _load_for_tensorrt(model, settings)
    first = open_session(model.path, settings)
    card = ModelCard.from_metadata(first.get_modelmeta().custom_metadata_map, model.path)
    sessions = [first] + [open_session(model.path, settings) for _ in range(settings.sessions - 1)]
    return card, _pool(sessions, card, model, settings)


def _load_for_tensorrt(model: ModelVersion, settings: Settings) -> tuple[ModelCard, SessionPool]:
    """TensorRT's profile comes from the card and the graph's input, so a CPU session reads
    them first (it builds no engine), then the TensorRT sessions open with it."""
    reader = open_session(model.path, settings.model_copy(update={"provider": "cpu"}))
    card = ModelCard.from_metadata(reader.get_modelmeta().custom_metadata_map, model.path)
    check_session(reader, card, model.path)
    graph_input = reader.get_inputs()[0]
    any_size = takes_any_size(graph_input, card)
    max_batch = fixed_batch(graph_input) or settings.max_batch_size
    profile = engine_profile(graph_input.name, card.input, any_size=any_size, max_batch=max_batch)
    gpu = GpuTarget(settings.trt_cache_dir / model.name / str(model.version), profile)
    sessions = [open_session(model.path, settings, gpu=gpu) for _ in range(settings.sessions)]
    return card, _pool(sessions, card, model, settings)


def _pool(
    sessions: list[ort.InferenceSession], card: ModelCard, model: ModelVersion, settings: Settings
) -> SessionPool:
    for session in sessions:
        check_session(session, card, model.path)
    runners = [Runner(s, card, io_binding=settings.io_binding) for s in sessions]
    return SessionPool(runners, model.key, settings.worker_nice)
