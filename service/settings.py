"""Every tunable of the service, in one place: environment variables prefixed ``SEGSERVE_``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEGSERVE_",
        frozen=True,
        protected_namespaces=(),
        extra="ignore",
        allow_inf_nan=False,  # an infinite timeout or delay is no setting: a server that hangs
    )

    # Model repository: <model_repository>/<name>/<version>/model.onnx
    model_repository: Path = Path("models")
    default_model: str | None = None
    # none: the folder as at start-up; poll: rescanned every model_poll_interval_s; explicit:
    # the repository API loads and unloads (service/control.py).
    model_control: Literal["none", "poll", "explicit"] = "none"
    model_poll_interval_s: float = Field(5.0, gt=0)

    # ONNX Runtime
    provider: Provider = "auto"
    sessions: int = Field(1, ge=1, description="ONNX Runtime sessions per model (the pool)")
    intra_op_threads: int = Field(0, ge=0, description="threads per CPU session; 0 = ORT decides")
    # Busy-waiting intra-op threads burn the cores decode/encode need (docs/PERFORMANCE.md);
    # turn on only where inference has cores of its own.
    intra_op_spinning: bool = False
    # TensorRT engines, one folder per model version (built once per model version and GPU)
    trt_cache_dir: Path = Path(".trt-cache")
    trt_fp16: bool = False
    # cuDNN's choice of convolution algorithm on CUDA: EXHAUSTIVE times every one for each new
    # input shape (ORT's default; seconds per shape, and native inputs come in many shapes).
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = "HEURISTIC"
    # Bind inputs and outputs to the session (one host->device copy per batch); None: on for
    # the GPU providers, off on the CPU (where it only adds a call).
    io_binding: bool | None = None

    # Dynamic batching and admission
    max_batch_size: int = Field(8, ge=1)
    # Input pixels one batch may hold (native inputs are large): a lane of h x w inputs batches
    # at most max_batch_pixels // (h * w) of them, and always at least one.
    max_batch_pixels: int = Field(1024 * 1024, ge=1)
    max_batch_delay_ms: float = Field(5.0, ge=0)
    # Start a batch at once when no other request for the model is being decoded (a lone
    # request never waits out the delay); false: always wait up to max_batch_delay_ms.
    batch_eager: bool = True
    max_queue: int = Field(256, ge=1)
    request_timeout_ms: float = Field(30_000, gt=0)
    # Refuse at once (503 + Retry-After) a request that the work already in the server would
    # keep waiting longer than this (service/admission.py); 0: admit all, the deadline applies.
    max_queue_wait_ms: float = Field(0, ge=0)

    # Input limits
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    # Windows one tiles request may run (a 4000x3000 image at tile 128, overlap 0.25: 1,302).
    max_tiles: int = Field(4096, ge=1)

    # Server. Each of ``processes`` (one port, docs/PERFORMANCE.md) loads the models and has its
    # own batcher, ``worker_threads`` and ONNX Runtime threads.
    processes: int = Field(1, ge=1, description="server processes sharing the port")
    worker_threads: int = Field(2, ge=1, description="threads for decode/resize/encode")
    # Nice value added to the decode/encode and inference threads (ONNX Runtime's included):
    # on a saturated CPU the event loop (admission, refusals, answers) then runs first. Off by
    # default: a flood of refused requests can then starve the work (docs/PERFORMANCE.md).
    worker_nice: int = Field(0, ge=0, le=19)
    drain_delay_s: float = Field(0.0, ge=0, description="SIGTERM: /readyz 503 this long first")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="longest wait for in-flight work")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    # The Open Inference Protocol over gRPC, on host:grpc_port beside HTTP (service/oip_grpc.py);
    # unset: no gRPC listener at all.
    grpc_port: int | None = Field(None, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # Security (docs/SECURITY.md); the lists are comma-separated in the environment.
    # No keys: no authentication. With keys: `Authorization: Bearer <key>` on every path but
    # the public ones (probes and metrics by default, so orchestrators need no secret).
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    auth_public_paths: Annotated[tuple[str, ...], NoDecode] = ("/healthz", "/readyz", "/metrics")
    # Request bodies held at once (each reserves its declared size): bounds upload memory.
    max_inflight_body_bytes: int = Field(256 * 1024 * 1024, ge=1)
    # Browser origins allowed to call the API; none: no CORS headers at all.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("api_keys", "auth_public_paths", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _one_process_for_explicit_control(self) -> Settings:
        # The repository API changes the process that answers it: with several, the others
        # would go on serving what it unloaded.
        if self.model_control == "explicit" and self.processes > 1:
            raise ValueError(
                "SEGSERVE_MODEL_CONTROL=explicit needs SEGSERVE_PROCESSES=1 (a load or unload "
                "reaches one process); use poll with several processes"
            )
        return self

    @cached_property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @cached_property
    def max_queue_wait_s(self) -> float:
        return self.max_queue_wait_ms / 1000.0

    @cached_property
    def request_timeout_s(self) -> float:
        return self.request_timeout_ms / 1000.0
