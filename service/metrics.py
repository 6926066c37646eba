"""Every Prometheus collector of the service, defined once.

One server process: the default registry, so the process and platform collectors that
prometheus_client registers by default are exported too. Several (``SEGSERVE_PROCESSES``):
prometheus_client's multiprocess mode, switched on by ``PROMETHEUS_MULTIPROC_DIR``, which the
supervisor sets before it starts them; whichever process answers a scrape reports the sums over
all of them (gauges: the ``multiprocess_mode`` given with each; no process_* metrics then).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def _per_version(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, documentation, ["model", "version"], buckets=buckets)


REQUESTS = Counter(
    "segserve_requests",
    "Segmentation requests by model, format and HTTP status code",
    ["model", "format", "code"],
)
REQUEST_LATENCY = Histogram(
    "segserve_request_duration_seconds",
    "Time from request arrival to response, /segment and OIP infer",
    ["model", "format"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = _per_version(
    "segserve_queue_wait_seconds",
    "Time an image waited in the batcher before its batch ran",
    _STAGE_BUCKETS,
)
INFERENCE_TIME = _per_version(
    "segserve_inference_duration_seconds",
    "ONNX Runtime time per batch (labels out)",
    _STAGE_BUCKETS,
)
BATCH_SIZE = _per_version("segserve_batch_size", "Images per inference batch", _BATCH_BUCKETS)
MODEL_LOADS = Counter(
    "segserve_model_loads",
    "Model versions loaded while serving (model control), by outcome: loaded or failed",
    ["model", "version", "outcome"],
)
QUEUE_DEPTH = Gauge(
    "segserve_queue_depth",
    "Images waiting in the batcher queue",
    ["model", "version"],
    multiprocess_mode="livesum",
)
IN_FLIGHT = Gauge(
    "segserve_in_flight_requests",
    "/segment and OIP infer requests being processed",
    multiprocess_mode="livesum",
)
REJECTIONS = Counter(
    "segserve_rejections",
    "/segment and OIP infer requests refused, by model and reason (problem code)",
    ["model", "reason"],
)
MODEL_INFO = Gauge(
    "segserve_model_loaded",
    "1 for every loaded model version, with its execution provider",
    ["model", "version", "provider"],
    multiprocess_mode="livemax",
)


def observe_request(
    model: str, fmt: str, status: int, latency_s: float, reason: str | None = None
) -> None:
    """One finished inference request (any door): counted by its HTTP ``status`` (a gRPC door's
    error counts by the HTTP status of the same error), its latency when it succeeded, else a
    rejection for ``reason`` (the error code; ``http_<status>`` when there is none)."""
    REQUESTS.labels(model, fmt, str(status)).inc()
    if status < 400:
        REQUEST_LATENCY.labels(model, fmt).observe(latency_s)
    else:
        REJECTIONS.labels(model, reason or f"http_{status}").inc()


def forget_version(model: str, version: str, provider: str) -> None:
    """Drop the series of a version no longer served (its queue, batch and inference figures
    and its loaded flag), so that a server swapping versions for months keeps only the served
    ones'. Not for a version replaced by a new file: that one still reports through them."""
    # With several processes a series lives on in this process's file: zeros say it is gone.
    MODEL_INFO.labels(model, version, provider).set(0)
    QUEUE_DEPTH.labels(model, version).set(0)
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        return
    for metric in (QUEUE_WAIT, INFERENCE_TIME, BATCH_SIZE, QUEUE_DEPTH):
        metric.remove(model, version)
    MODEL_INFO.remove(model, version, provider)


def exposition() -> tuple[bytes, str]:
    """The text exposition (of every server process, when there are several) and its type."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
