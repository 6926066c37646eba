"""The HTTP edge's CPU per ``POST /segment`` request, in-process, for source trees side by side.

    python -m bench.edge                                  # this checkout
    python -m bench.edge --tree /tmp/segserve-a --rounds 3 --json out.json

segserve's ASGI app (``create_app``, the bundled model loaded) is called directly with the
640x480 JPEG upload, as uvicorn would call it, with ``service.pipeline.segment`` replaced by its
own answer, handed back one event-loop iteration later (as the batcher's would be). What is
timed is everything around the pipeline: the middlewares, routing and parameter validation, the
body read, the client watcher, the answer and the access-log line (JSON, to /dev/null). No
sockets: uvicorn's share is not in it. Per tree: process CPU per request over ``--requests``
requests, best of ``--repeat``; each tree runs in its own interpreter (``--tree``: another
checkout, run with its own ``service`` and ``bench``), the trees alternated ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3000, help="per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per tree and round")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def compare(args: argparse.Namespace) -> list[dict]:
    """Each tree (this checkout last) in a fresh interpreter per round, in turn."""
    trees = [*(tree.resolve() for tree in args.tree), ROOT]
    rows = []
    for round_ in range(args.rounds):
        for tree in trees:
            # -P: the tree's own ``service`` and ``bench`` (PYTHONPATH), not this folder's modules.
            command = [sys.executable, "-P", str(Path(__file__).resolve()), "--measure"]
            command += ["--requests", str(args.requests), "--repeat", str(args.repeat)]
            env = os.environ | {"PYTHONPATH": str(tree)}
            done = subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True)
            row = {"tree": str(tree), "round": round_} | json.loads(done.stdout)
            print(f"{tree}: {row['edge_cpu_ms']:.4f} ms per request (load {row['load']})")
            rows.append(row)
    return rows


def measure(requests: int, repeat: int) -> dict:
    """This interpreter's tree (``service`` as imported): the edge's CPU ms per request."""
    import uvloop

    from bench.images import sample_jpeg
    from bench.offline import served_alone
    from bench.server import DEFAULT_MODEL
    from service import pipeline
    from service.app import create_app
    from service.logs import configure_logging
    from service.settings import Settings

    configure_logging("info", "json")
    with open(os.devnull, "w") as devnull:
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(devnull)
        app = create_app(Settings(), served_alone(DEFAULT_MODEL))
        times = uvloop.run(_time(app, pipeline, sample_jpeg("small"), requests, repeat))
    return {"edge_cpu_ms": min(times), "timings_ms": times, "load": _load()}


async def _time(
    app: Any, pipeline: ModuleType, body: bytes, requests: int, repeat: int
) -> list[float]:
    service = app.state.service
    await service.load()
    answer = await pipeline.segment(
        service,
        service.model(None, None),
        body,
        pipeline.SegmentOptions(),
        deadline=time.monotonic() + 60,
    )
    pipeline.segment = _answering(answer)  # type: ignore[attr-defined]
    scope = _segment_scope(len(body))
    assert await _one_request(app, scope, body) == 200
    times = []
    for _ in range(repeat):
        cpu0 = time.process_time()
        for _ in range(requests):
            await _one_request(app, scope, body)
        times.append((time.process_time() - cpu0) * 1000.0 / requests)
    await service.close()
    return times


def _answering(answer: object) -> Callable[..., Awaitable[object]]:
    """A stand-in for ``pipeline.segment``: ``answer``, one event-loop iteration later, waited
    for as the pipeline waits for its batch (with the client watcher)."""
    from service.waiting import unless_gone

    async def segment(
        *args: object, client_gone: Callable[[], Awaitable[None]] | None = None, **kwargs: object
    ) -> object:
        queued: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        queued.get_loop().call_soon(queued.set_result, answer)
        return await unless_gone(queued, client_gone)

    return segment


def _segment_scope(body_bytes: int) -> dict[str, Any]:
    """The ASGI scope uvicorn gives a ``POST /segment?format=png`` of a JPEG."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/segment",
        "raw_path": b"/segment",
        "query_string": b"format=png",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"image/jpeg"),
            (b"content-length", str(body_bytes).encode()),
        ],
    }


async def _one_request(app: Any, scope: dict[str, Any], body: bytes) -> int:
    """``app`` called once with ``body``; its status. The client stays: after the body,
    ``receive`` waits (as a connected client's does)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(dict(scope, state={}), receive, send)
    return statuses[0]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.measure:
        print(json.dumps(measure(args.requests, args.repeat)))
        return
    rows = compare(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
