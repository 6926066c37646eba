"""HTTP load generator for ``POST /segment``: closed loop (fixed concurrency) or open (Poisson).

    python -m bench.loadtest --concurrency 32 --duration 20
    python -m bench.loadtest --rate 50 --requests 2000 --server-pid 1234 --json out.json
    python -m bench.loadtest --oip-model shapes-fcn --client raw  # POST /v2/models/{m}/infer

Closed loop keeps ``concurrency`` requests in flight: it measures the most a server can do.
Open loop sends at a fixed mean rate whatever the server does, and times each request from its
*scheduled* send time, so a stalled server shows up in the latency (no coordinated omission).

The client shares the 2 cores with the server it measures, so it is kept light: keep-alive
connections, the body and URL built once, uvloop when installed, answers checked only after the
run on a random sample, and its own CPU use reported next to the server's. ``--client raw``
(bench.transport) cuts the client's CPU per request several times compared with httpx.
Bounded: at most MAX_DURATION_S seconds and MAX_REQUESTS requests; loopback targets only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import orjson
from PIL import Image

from bench import oip_body, procstat
from bench.images import sample_jpeg
from bench.transport import HttpxTransport, RawTransport, Transport

MAX_DURATION_S = 900.0
MAX_REQUESTS = 200_000
MAX_CONCURRENCY = 1024
MAX_IN_FLIGHT_OPEN_LOOP = 2048


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    body: bytes
    content_type: str = "image/jpeg"
    multipart: bool = False  # send the image as part "image" of multipart/form-data
    client: str = "httpx"  # or "raw": see bench.transport
    query: tuple[tuple[str, str], ...] = ()  # extra query parameters (model, version, alpha)
    format: str = "png"
    concurrency: int | None = 8  # closed loop when set
    rate: float | None = None  # open loop (requests/s) when set; wins over concurrency
    duration_s: float | None = 10.0
    requests: int | None = None  # measured requests; the run stops at whichever bound comes first
    warmup_s: float = 2.0
    timeout_s: float = 60.0
    check: int = 20  # answers sampled and verified after the run
    server_pid: int | None = None
    rss_every: int | None = None  # record the server's RSS every N completed requests
    progress: bool = True
    seed: int = 0
    # The Open Inference Protocol instead of /segment: this model's infer route, the image as
    # BYTES and the png output as binary data (or both as base64 JSON: bench.oip_body).
    oip_model: str | None = None
    oip_base64: bool = False

    @property
    def mode(self) -> str:
        return "open" if self.rate else "closed"


@dataclass
class LoadResult:
    mode: str
    concurrency: int | None
    rate: float | None
    format: str
    body_bytes: int
    requests: int
    ok: int
    wall_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    status_counts: dict[str, int]
    latency_by_status_ms: dict[str, dict[str, float]]
    checked: int
    check_failures: list[str]
    client_cpu_cores: float
    client: str = "httpx"
    client_cpu_ms_per_request: float | None = None
    server_cpu_cores: float | None = None
    server_cpu_ms_per_request: float | None = None
    server_rss_mb: dict[str, float] = field(default_factory=dict)
    load_average: str = ""
    # Open loop: how late the client itself sent each request after its scheduled time (timer
    # resolution and its own wait for a core), which every latency above includes; and the
    # latencies by status timed from the actual send instead, without it.
    send_lateness_ms: dict[str, float] = field(default_factory=dict)
    latency_from_send_by_status_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def markdown_row(self, label: str = "") -> str:
        lat = self.latency_ms
        level = f"c={self.concurrency}" if self.mode == "closed" else f"{self.rate:g}/s"
        server = "" if self.server_cpu_cores is None else f"{self.server_cpu_cores:.2f}"
        return (
            f"| {label} | {self.mode} {level} | {self.requests} | {self.ok} "
            f"| {self.throughput_rps:.1f} | {lat['p50']:.1f} | {lat['p90']:.1f} "
            f"| {lat['p99']:.1f} | {lat['max']:.1f} | {self.client_cpu_cores:.2f} | {server} |"
        )

    @staticmethod
    def markdown_header() -> str:
        return (
            "| run | load | requests | 200 | req/s | p50 ms | p90 ms | p99 ms | max ms "
            "| client cores | server cores |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|"
        )


def require_loopback(base_url: str) -> None:
    """Refuse anything but this machine: a load generator must never hit someone else's server."""
    host = urlsplit(base_url).hostname
    if not host:
        raise SystemExit(f"no host in {base_url!r}")
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve {host!r}: {exc}") from exc
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not addresses or not all(a.is_loopback for a in addresses):
        raise SystemExit(f"refusing non-loopback target {host!r} ({sorted(map(str, addresses))})")


class _Recorder:
    """Collects per-request outcomes of the measured window; cheap enough to call per request."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.latencies: list[float] = []
        self.lateness: list[float] = []
        self.latencies_by_status: collections.defaultdict[str, list[float]] = (
            collections.defaultdict(list)
        )
        self.from_send_by_status: collections.defaultdict[str, list[float]] = (
            collections.defaultdict(list)
        )
        self.statuses: collections.Counter[str] = collections.Counter()
        self.samples: list[bytes] = []
        self.completed = 0
        self.last_done = 0.0
        self.rss_marks: dict[str, float] = {}
        self._successes = 0
        self._rng = random.Random(spec.seed)

    def record(self, scheduled: float, sent: float, status: str, body: bytes | None) -> None:
        now = time.perf_counter()
        self.lateness.append(sent - scheduled)
        self.latencies.append(now - scheduled)
        self.latencies_by_status[status].append(now - scheduled)
        self.from_send_by_status[status].append(now - sent)
        self.statuses[status] += 1
        self.completed += 1
        self.last_done = now
        if body is not None:
            self._successes += 1
            self._sample(body)
        every = self.spec.rss_every
        if every and self.spec.server_pid and self.completed % every == 0:
            rss = procstat.rss_bytes(self.spec.server_pid) / 2**20
            self.rss_marks[str(self.completed)] = round(rss, 1)

    def _sample(self, body: bytes) -> None:
        # Reservoir sampling: a uniform sample of the answers, whatever the run length.
        k = self.spec.check
        if len(self.samples) < k:
            self.samples.append(body)
        else:
            j = self._rng.randrange(self._successes)
            if j < k:
                self.samples[j] = body


def request_body(spec: LoadSpec) -> tuple[bytes, dict[str, str]]:
    """The request body and headers, built once for the whole run."""
    if spec.oip_model is not None:
        return oip_body.infer_request(spec.body, base64_json=spec.oip_base64)
    if not spec.multipart:
        return spec.body, {"content-type": spec.content_type}
    boundary = "segserve-bench-5f0c1b9e"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="image"\r\nContent-Type: {spec.content_type}\r\n\r\n'
    ).encode()
    body = head + spec.body + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


async def _send(transport: Transport, scheduled: float, recorder: _Recorder | None) -> None:
    sent = time.perf_counter()
    status, body = await transport.post()
    if recorder is not None:
        recorder.record(scheduled, sent, status, body if status == "200" else None)


async def _closed_loop(
    transport: Transport, spec: LoadSpec, recorder: _Recorder, window: _Window
) -> None:
    async def worker() -> None:
        while True:
            now = time.perf_counter()
            measured = now >= window.start
            if measured and not window.admit():
                return
            await _send(transport, now, recorder if measured else None)

    assert spec.concurrency
    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))


async def _open_loop(
    transport: Transport, spec: LoadSpec, recorder: _Recorder, window: _Window
) -> None:
    assert spec.rate
    rng = random.Random(spec.seed)
    in_flight: set[asyncio.Task[None]] = set()
    scheduled = time.perf_counter()
    while True:
        scheduled += rng.expovariate(spec.rate)
        # uvloop's timers count whole milliseconds and can fire up to one early: sleep again
        # until the scheduled time, so no request leaves before it (latency runs from there).
        while (delay := scheduled - time.perf_counter()) > 0:  # noqa: ASYNC110 (a time, no event)
            await asyncio.sleep(delay)
        measured = scheduled >= window.start
        if measured and not window.admit():
            break
        if len(in_flight) >= MAX_IN_FLIGHT_OPEN_LOOP:
            # The server fell so far behind that the client would only measure its own backlog.
            if measured:
                recorder.record(scheduled, scheduled, "client_backlog", None)
            continue
        task = asyncio.create_task(_send(transport, scheduled, recorder if measured else None))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


class _Window:
    """The measured window: starts after warm-up, ends at the duration or the request count."""

    def __init__(self, spec: LoadSpec, start: float) -> None:
        self.start = start
        self.end = start + (spec.duration_s if spec.duration_s is not None else MAX_DURATION_S)
        self.budget = spec.requests if spec.requests is not None else MAX_REQUESTS
        self.issued = 0

    def admit(self) -> bool:
        if self.issued >= self.budget or time.perf_counter() >= self.end:
            return False
        self.issued += 1
        return True


async def _progress(spec: LoadSpec, recorder: _Recorder, window: _Window) -> None:
    from tqdm import tqdm

    total = spec.requests if spec.requests is not None else None
    with tqdm(
        total=total,
        unit="req",
        disable=not spec.progress,
        file=sys.stderr,
        desc=f"{spec.mode} loop",
    ) as bar:
        while True:
            await asyncio.sleep(0.5)
            bar.set_postfix_str("warm-up" if time.perf_counter() < window.start else "")
            bar.update(recorder.completed - bar.n)


def check_answer(body: bytes, fmt: str, size: tuple[int, int]) -> str | None:
    """None when ``body`` is a well-formed answer for an image of ``size``, else what is wrong."""
    try:
        if fmt == "rle":
            doc = orjson.loads(body)
            if (doc["width"], doc["height"]) != size:
                return f"rle size {(doc['width'], doc['height'])} != {size}"
            if sum(m["area"] for m in doc["masks"]) != size[0] * size[1]:
                return "rle areas do not sum to width*height"
            return None
        image = Image.open(io.BytesIO(body))
        image.load()
        if image.size != size:
            return f"png size {image.size} != {size}"
        if fmt == "png" and image.mode != "P":
            return f"png mode {image.mode} != P"
        return None
    except Exception as exc:  # any decoding failure is a wrong answer, reported as such
        return f"{type(exc).__name__}: {exc}"


def _check(body: bytes, spec: LoadSpec, size: tuple[int, int]) -> str | None:
    if spec.oip_model is not None:
        try:
            body = oip_body.png_of(body)
        except (ValueError, KeyError, IndexError, struct.error) as exc:
            return f"not an OIP answer with a png: {exc!r}"
    return check_answer(body, spec.format, size)


async def _run(spec: LoadSpec) -> LoadResult:
    require_loopback(spec.base_url)
    url = f"{spec.base_url.rstrip('/')}/segment?{urlencode([('format', spec.format), *spec.query])}"
    if spec.oip_model is not None:
        url = f"{spec.base_url.rstrip('/')}/v2/models/{spec.oip_model}/infer"
    content, headers = request_body(spec)
    connections = spec.concurrency if spec.mode == "closed" else MAX_IN_FLIGHT_OPEN_LOOP
    transport: Transport = (
        RawTransport(url, content, headers, spec.timeout_s)
        if spec.client == "raw"
        else HttpxTransport(url, content, headers, spec.timeout_s, connections or 1)
    )
    recorder = _Recorder(spec)
    window = _Window(spec, time.perf_counter() + spec.warmup_s)
    server_cpu0 = rss0 = None
    try:
        progress = asyncio.create_task(_progress(spec, recorder, window))
        loop = _closed_loop if spec.mode == "closed" else _open_loop
        load = asyncio.create_task(loop(transport, spec, recorder, window))
        # Sample both sides' CPU clocks at the start of the measured window.
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        client_cpu0, wall0 = time.process_time(), time.perf_counter()
        if spec.server_pid:
            server_cpu0 = procstat.cpu_seconds(spec.server_pid)
            rss0 = procstat.rss_bytes(spec.server_pid)
        await load
        wall = max(recorder.last_done, window.start) - window.start
        client_cpu = time.process_time() - client_cpu0
        server_cpu = (
            procstat.cpu_seconds(spec.server_pid) - server_cpu0
            if spec.server_pid and server_cpu0 is not None
            else None
        )
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
    finally:
        await transport.aclose()

    size = Image.open(io.BytesIO(spec.body)).size
    failures = [f for b in recorder.samples if (f := _check(b, spec, size))]
    lat = np.asarray(recorder.latencies) * 1000.0
    ok = recorder.statuses.get("200", 0)
    result = LoadResult(
        mode=spec.mode,
        concurrency=spec.concurrency if spec.mode == "closed" else None,
        rate=spec.rate,
        format=spec.format,
        body_bytes=len(spec.body),
        requests=recorder.completed,
        ok=ok,
        wall_s=round(wall, 3),
        throughput_rps=ok / wall if wall > 0 else 0.0,
        latency_ms=_percentiles(lat),
        status_counts=dict(recorder.statuses),
        latency_by_status_ms={
            status: _percentiles(np.asarray(times) * 1000.0)
            for status, times in recorder.latencies_by_status.items()
        },
        checked=len(recorder.samples),
        check_failures=failures[:5] + ([f"... {len(failures)} in all"] * (len(failures) > 5)),
        client_cpu_cores=client_cpu / (time.perf_counter() - wall0),
        client=spec.client,
        client_cpu_ms_per_request=1000.0 * client_cpu / max(1, recorder.completed),
        load_average=str(procstat.load_average()),
        send_lateness_ms=_percentiles(np.asarray(recorder.lateness) * 1000.0),
        latency_from_send_by_status_ms={
            status: _percentiles(np.asarray(times) * 1000.0)
            for status, times in recorder.from_send_by_status.items()
        },
    )
    if server_cpu is not None and spec.server_pid and rss0 is not None:
        result.server_cpu_cores = server_cpu / wall if wall > 0 else 0.0
        result.server_cpu_ms_per_request = 1000.0 * server_cpu / max(1, recorder.completed)
        result.server_rss_mb = (
            {"start": round(rss0 / 2**20, 1)}
            | recorder.rss_marks
            | {"end": round(procstat.rss_bytes(spec.server_pid) / 2**20, 1)}
        )
    return result


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    if not ms.size:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"), float("nan"))
    points = {name: float(np.percentile(ms, q)) for name, q in _PERCENTILES}
    return points | {"mean": float(ms.mean())}


_PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))


def run(spec: LoadSpec) -> LoadResult:
    """Run one bounded load test (uvloop when installed: it makes the client cheaper)."""
    if spec.duration_s is not None and not 0 < spec.duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S}] s")
    if spec.requests is not None and not 0 < spec.requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be in (0, {MAX_REQUESTS}]")
    if not spec.rate and not (spec.concurrency and 0 < spec.concurrency <= MAX_CONCURRENCY):
        raise ValueError(f"give a rate, or a concurrency in 1..{MAX_CONCURRENCY}")
    if not 0 <= spec.warmup_s <= 60:
        raise ValueError("warm-up must be 0..60 s")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(spec))
    return uvloop.run(_run(spec))


def _load_body(image: str) -> bytes:
    return sample_jpeg(image) if image in ("small", "large") else Path(image).read_bytes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="loopback base URL")
    parser.add_argument(
        "--image", default="small", help="'small' (640x480), 'large' (4000x3000) or a JPEG path"
    )
    parser.add_argument("--format", default="png", choices=["png", "rle", "overlay"])
    parser.add_argument("--multipart", action="store_true", help="multipart/form-data upload")
    parser.add_argument("--oip-model", help="POST an OIP infer request for this model (png out)")
    parser.add_argument(
        "--oip-base64", action="store_true", help="OIP as base64 JSON (servers without binary)"
    )
    parser.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra query parameter, e.g. model=shapes-fcn (repeatable)",
    )
    parser.add_argument(
        "--client",
        choices=["httpx", "raw"],
        default="httpx",
        help="httpx, or a minimal HTTP/1.1 client (less client CPU)",
    )
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight")
    loop.add_argument("--rate", type=float, help="open loop: mean arrivals per second (Poisson)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--requests", type=int, help="measured requests (stops at whichever first)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds discarded first")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    parser.add_argument("--check", type=int, default=20, help="answers to verify after the run")
    parser.add_argument("--server-pid", type=int, help="report this process's CPU and RSS")
    parser.add_argument("--rss-every", type=int, help="record server RSS every N requests")
    parser.add_argument("--label", default="", help="first column of the markdown row")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--markdown", type=Path, help="append the markdown row here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    spec = LoadSpec(
        base_url=args.url,
        body=_load_body(args.image),
        multipart=args.multipart,
        client=args.client,
        query=tuple(tuple(q.split("=", 1)) for q in args.query),
        format=args.format,
        concurrency=None if args.rate else args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        requests=args.requests,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        check=args.check,
        server_pid=args.server_pid,
        rss_every=args.rss_every,
        progress=not args.no_progress,
        oip_model=args.oip_model,
        oip_base64=args.oip_base64,
    )
    result = run(spec)
    row = result.markdown_row(args.label)
    print(LoadResult.markdown_header())
    print(row)
    if result.status_counts.keys() - {"200"} or result.check_failures:
        print(f"statuses: {result.status_counts}; check failures: {result.check_failures}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write(row + "\n")
    if result.ok == 0 or result.check_failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
