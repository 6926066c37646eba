"""``python -m service``: serve the model repository with uvicorn, configured by SEGSERVE_*.

Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT), 1 when the models cannot be served,
2 for invalid settings, 3 when a listen address cannot be had (port in use: SEGSERVE_PORT or
SEGSERVE_GRPC_PORT).
"""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError

from service import processes
from service.logs import configure_logging
from service.settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        # One log line per invalid variable, in the log format asked for where that much is valid
        # (values are not repeated: one of them may be an API key).
        fmt = os.environ.get("SEGSERVE_LOG_FORMAT", "json")
        configure_logging("info", fmt if fmt in ("json", "text") else "json")
        for error in exc.errors():
            if error["loc"]:
                variable = "SEGSERVE_" + "_".join(map(str, error["loc"])).upper()
                message = f"invalid setting {variable}: {error['msg']}"
            else:  # settings valid alone, not together
                message = f"invalid settings: {error['msg']}"
            logging.getLogger("segserve").error("%s", message)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.processes > 1:
        return processes.supervise(settings)
    # Imported here: the supervisor never serves, and without the server stack (FastAPI, ONNX
    # Runtime, NumPy, Pillow) it stays at ~45 MiB instead of ~90.
    from service import server

    return server.serve(settings)


if __name__ == "__main__":
    sys.exit(main())
