"""ONNX Runtime session config entries added to segserve's own options, for measuring a lever
that has no setting (``bench.variant`` over HTTP, ``bench.offline`` in-process). Loads the core
only: the in-process limit must run without the web stack."""

from __future__ import annotations

import onnxruntime as ort

from service import runtime
from service.settings import Settings


def add_ort_config(pairs: list[str]) -> None:
    """Make ``service.runtime`` add these ``KEY=VALUE`` config entries to every new session."""
    entries = [pair.split("=", 1) for pair in pairs]
    original = runtime.session_options

    def session_options(settings: Settings) -> ort.SessionOptions:
        options = original(settings)
        for key, value in entries:
            options.add_session_config_entry(key, value)
        return options

    runtime.session_options = session_options  # type: ignore[assignment]
