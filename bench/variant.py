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

import uvicorn

from bench.ort_config import add_ort_config
from service import __main__ as entry
from service import server


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
