"""Which ONNX Runtime execution providers a session asks for, and with which options.

Provider choice (``SEGSERVE_PROVIDER``):
- ``cpu``: the CPU provider.
- ``cuda`` / ``tensorrt``: that provider or a ``ModelLoadError`` (never a silent CPU fallback:
  someone who asked for a GPU wants to know they did not get one).
- ``auto``: CUDA only when this ONNX Runtime build lists it *and* a session really comes up with it
  first; otherwise CPU. On a CPU build CUDA is never tried, so nothing is logged as an error.

On CUDA, cuDNN picks each convolution's algorithm by ``SEGSERVE_CUDNN_CONV_ALGO_SEARCH``: ORT's
own default, an exhaustive search, times every algorithm once per new input shape, and the
``native`` policy makes many shapes. TensorRT builds one engine per model version for one
optimisation profile (``engine_profile``): batch 1 to the largest batch, and every input shape
the card's default policies produce, so a new batch size or bucket never rebuilds it. The warm-up
batch at load builds it (before ``/readyz``); it is cached per model version on disk, with a
timing cache shared by all, so a restart or another replica on the same GPU loads it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.errors import ModelLoadError
from service.model_card import InputSpec
from service.policies import bucket_step
from service.settings import Settings

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DISPLAY_NAMES = {CPU: "CPU", CUDA: "CUDA", TENSORRT: "TensorRT"}

ProviderSpec = str | tuple[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way to create a session: the providers to pass, and which one must end up first."""

    providers: tuple[ProviderSpec, ...]
    expect: str
    required: bool  # False: on failure, quietly try the next attempt


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """A TensorRT optimisation profile for one input: its smallest, tuned-for and largest shape."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def options(self) -> dict[str, str]:
        return {
            f"trt_profile_{which}_shapes": f"{self.input_name}:{'x'.join(map(str, shape))}"
            for which, shape in (("min", self.min), ("opt", self.opt), ("max", self.max))
        }


@dataclass(frozen=True, slots=True)
class GpuTarget:
    """What the GPU providers need to know of the model version a session is for."""

    cache_dir: Path  # this version's engines
    profile: EngineProfile | None  # None: TensorRT derives one from the first batch

    @classmethod
    def of(cls, settings: Settings, gpu: GpuTarget | None) -> GpuTarget:
        """``gpu``, or for a session that names none the cache folder itself, no profile."""
        return gpu or cls(settings.trt_cache_dir, None)


def engine_profile(
    input_name: str, spec: InputSpec, *, any_size: bool, max_batch: int
) -> EngineProfile:
    """Batch 1 to ``max_batch``; for a model that takes any size, heights and widths from the
    smallest ``native`` bucket to the largest of the card's input size, its tile and its
    ``max_side`` rounded up to a bucket; tuned for a full batch at the card's input size.
    Per-request overrides beyond the card's defaults fall outside it: TensorRT refuses them."""
    height, width = spec.height, spec.width
    low, high = (height, width), (height, width)
    if any_size:
        step = bucket_step(spec.stride)
        largest = max(height, width, spec.tile or 0, -(-spec.max_side // step) * step)
        low = (min(step, height), min(step, width))
        high = (largest, largest)

    def shape(batch: int, size: tuple[int, int]) -> tuple[int, ...]:
        return (batch, *size, 3) if spec.layout == "NHWC" else (batch, 3, *size)

    return EngineProfile(
        input_name, shape(1, low), shape(max_batch, (height, width)), shape(max_batch, high)
    )


def plan_providers(
    settings: Settings, available: list[str], gpu: GpuTarget | None = None
) -> list[Attempt]:
    """The session attempts for ``settings.provider`` given ``ort.get_available_providers()``;
    ``gpu``: the model version's TensorRT cache and profile (default: the cache folder itself,
    and a profile TensorRT derives from the first batch)."""
    requested = settings.provider
    if requested == "cpu":
        return [Attempt((CPU,), CPU, required=True)]
    cuda: ProviderSpec = (CUDA, {"cudnn_conv_algo_search": str(settings.cudnn_conv_algo_search)})
    if requested in ("cuda", "tensorrt"):
        wanted = CUDA if requested == "cuda" else TENSORRT
        if wanted not in available:
            raise ModelLoadError(
                f"SEGSERVE_PROVIDER={requested} but this ONNX Runtime build has no {wanted} "
                f"(available: {', '.join(available)}); install onnxruntime-gpu "
                "(`make serve ORT=gpu`) or set SEGSERVE_PROVIDER=auto"
            )
        if requested == "cuda":
            return [Attempt((cuda, CPU), CUDA, required=True)]
        # Nodes TensorRT cannot take run on CUDA, then CPU.
        trt: ProviderSpec = (TENSORRT, tensorrt_options(settings, GpuTarget.of(settings, gpu)))
        return [Attempt((trt, cuda, CPU), TENSORRT, required=True)]
    attempts = [Attempt((cuda, CPU), CUDA, required=False)] if CUDA in available else []
    return [*attempts, Attempt((CPU,), CPU, required=True)]


def tensorrt_options(settings: Settings, gpu: GpuTarget) -> dict[str, str]:
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(gpu.cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(settings.trt_cache_dir),
        "trt_fp16_enable": str(settings.trt_fp16),
    }
    if gpu.profile:
        options |= gpu.profile.options()
    return options
