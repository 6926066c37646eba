"""Logging: one JSON object per line (or plain text), each tagged with the current request id."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from service.context import NO_REQUEST, request_id_var

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which server process, when SEGSERVE_PROCESSES > 1
        }
        request_id = request_id_var.get()
        if request_id != NO_REQUEST:
            entry["request_id"] = request_id
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key != "color_message"
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_var.get()
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A client's path or header in a message must not start a line of its own: one record,
        # one line (a traceback, appended after it, keeps its lines).
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger (uvicorn's included) to stderr in ``fmt`` ("json" or "text")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The access line is ours (one per request, with model, status and latency); drop uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)  # library warnings become log lines in the same format
