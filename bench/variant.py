"""``python -m service`` with a lever flipped that has no setting, to measure it over HTTP.

    python -m bench.variant --ort-config session.intra_op.allow_spinning=0
    python -m bench.variant --loop asyncio --http h11
    python -m bench.variant --switch-interval 1     # the interpreter's GIL switch interval, ms
    python -m bench.variant --gc-off                # no cyclic garbage collection (what it costs)

Only for measurement: it patches this process's view of ``service.runtime.session_options`` or
uvicorn's loop/protocol choice, then runs the unchanged ``service.__main__.main``. A lever that
wins is then made a real setting or default in ``service/`` (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys

import onnxruntime as ort
import uvicorn

from service import __main__ as entry
from service import runtime, server
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ort-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ONNX Runtime session config entry, added to segserve's options",
    )
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto")
    parser.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval, in ms (Python's: 5)"
    )
    parser.add_argument(
        "--gc-off", action="store_true", help="gc.disable(): cycles leak, for short runs only"
    )
    args = parser.parse_args()
    if args.gc_off:
        gc.disable()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)

    add_ort_config(args.ort_config)
    server.uvicorn.Config = functools.partial(  # type: ignore[assignment]
        uvicorn.Config, loop=args.loop, http=args.http
    )
    return entry.main()


if __name__ == "__main__":
    sys.exit(main())
