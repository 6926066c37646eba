"""Every Prometheus collector of the service, defined once (default registry, so the process and
platform collectors that prometheus_client registers by default are exported too)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)

REQUESTS = Counter(
    "segserve_requests",
    "Segmentation requests by model, format and HTTP status code",
    ["model", "format", "code"],
)
REQUEST_LATENCY = Histogram(
    "segserve_request_duration_seconds",
    "Time from request arrival to response, /segment",
    ["model", "format"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "segserve_queue_wait_seconds",
    "Time an image waited in the batcher before its batch ran",
    ["model", "version"],
    buckets=_STAGE_BUCKETS,
)
INFERENCE_TIME = Histogram(
    "segserve_inference_duration_seconds",
    "ONNX Runtime time per batch (labels out)",
    ["model", "version"],
    buckets=_STAGE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "segserve_batch_size",
    "Images per inference batch",
    ["model", "version"],
    buckets=_BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "segserve_queue_depth", "Images waiting in the batcher queue", ["model", "version"]
)
IN_FLIGHT = Gauge("segserve_in_flight_requests", "/segment requests being processed")
REJECTIONS = Counter(
    "segserve_rejections",
    "/segment requests refused, by model and reason (problem code)",
    ["model", "reason"],
)
MODEL_INFO = Gauge(
    "segserve_model_loaded",
    "1 for every loaded model version, with its execution provider",
    ["model", "version", "provider"],
)


def exposition() -> tuple[bytes, str]:
    """The text exposition of the default registry and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
