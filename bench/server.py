"""Start a server under test as a subprocess on 127.0.0.1 and stop it again (by its PID only);
run the measuring tools (``bench.loadtest``, ``bench.offline``) as subprocesses beside it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPOSITORY = ROOT / "models"
# Version 1 (128x128, stretched): what the HTTP-layer figures have always been measured with.
DEFAULT_MODEL = DEFAULT_MODEL_REPOSITORY / "shapes-fcn" / "1" / "model.onnx"
# The bundled default (the latest version): what the input policies and scales are measured with.
LATEST_MODEL = DEFAULT_MODEL_REPOSITORY / "shapes-fcn" / "4" / "model.onnx"
# The framework baselines live in their own venvs (never in .venv): see docs/PERFORMANCE.md.
FRAMEWORK_PYTHON = {
    "litserve": os.environ.get("LITSERVE_PYTHON", "/tmp/litserve-venv/bin/python"),
    "bentoml": os.environ.get("BENTOML_PYTHON", "/tmp/bentoml-venv/bin/python"),
    "rayserve": os.environ.get("RAYSERVE_PYTHON", "/tmp/rayserve-venv/bin/python"),
    # Open Inference Protocol peers (bench.oip_peers).
    "kserve": os.environ.get("KSERVE_PYTHON", "/tmp/kserve-venv/bin/python"),
    "mlserver": os.environ.get("MLSERVER_PYTHON", "/tmp/mlserver-venv/bin/python"),
}
# Servers that take the image as multipart/form-data only.
MULTIPART_ONLY = frozenset({"litserve", "bentoml", "rayserve"})
# Where a server says it is ready, when not at /readyz: the OIP peers' health route.
READY_PATHS = {"kserve": "/v2/health/ready", "mlserver": "/v2/health/ready"}


@dataclass
class RunningServer:
    kind: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def add_settings_option(
    parser: argparse.ArgumentParser, flag: str = "--set", dest: str = "settings", *, help: str
) -> None:
    """A repeatable ``SEGSERVE_X=V`` option; ``settings_dict`` turns its list into a dict."""
    parser.add_argument(
        flag, dest=dest, action="append", default=[], metavar="SEGSERVE_X=V", help=help
    )


def settings_dict(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def run_loadtest(base_url: str, pid: int, out: Path, *extra: str) -> dict:
    """``bench.loadtest`` against ``base_url`` in its own process (it must not compete with this
    one for the cores), measuring server ``pid``; its JSON result, written to ``out``."""
    command = [
        sys.executable,
        "-m",
        "bench.loadtest",
        "--url",
        base_url,
        "--server-pid",
        str(pid),
        "--json",
        str(out),
        "--no-progress",
        *extra,
    ]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_offline(
    model: Path, out: Path, settings: list[str], *extra: str, root: Path = ROOT
) -> dict:
    """``bench.offline`` on ``model`` with these ``SEGSERVE_X=V`` settings, from the source tree
    ``root`` (another checkout, for a before/after: ``bench.sections``); its JSON result."""
    command = [
        sys.executable,
        "-m",
        "bench.offline",
        "--model",
        str(model.resolve()),
        "--json",
        str(out.resolve()),
        *(f"--set={s}" for s in settings),
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": str(root.resolve())}
    subprocess.run(command, check=True, cwd=root, env=env)
    return json.loads(out.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_for(kind: str, model: Path, port: int, variant: list[str] | None = None) -> list[str]:
    """The server's command line; ``variant``: segserve via ``bench.variant`` with these flags."""
    if kind == "segserve":
        if variant:
            return [sys.executable, "-m", "bench.variant", *variant]
        return [sys.executable, "-m", "service"]
    if kind == "naive":
        return [
            sys.executable,
            "-m",
            "bench.baselines.naive_server",
            str(model),
            "--port",
            str(port),
        ]
    if kind in FRAMEWORK_PYTHON:
        return [
            FRAMEWORK_PYTHON[kind],
            "-m",
            f"bench.baselines.{kind}_server",
            str(model),
            "--port",
            str(port),
        ]
    raise ValueError(f"unknown server kind {kind!r}")


def segserve_env(
    model: Path, port: int, settings: dict[str, str], root: Path = ROOT
) -> dict[str, str]:
    """A clean SEGSERVE_ environment serving ``model`` alone (not the other versions beside it,
    which a request naming no version would otherwise reach), on loopback, with the code of the
    source tree ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    env["PYTHONPATH"] = str(root)
    repository = single_version_repository(model)
    return (
        env
        | {
            "SEGSERVE_MODEL_REPOSITORY": str(repository),
            "SEGSERVE_DEFAULT_MODEL": next(repository.iterdir()).name,
            "SEGSERVE_HOST": "127.0.0.1",
            "SEGSERVE_PORT": str(port),
            # Everything else at its default (JSON access log included): the bench measures what
            # `python -m service` does out of the box.
            "SEGSERVE_PROVIDER": "cpu",
        }
        | settings
    )


def served_as(model: Path) -> tuple[str, str]:
    """(name, version) ``serve`` serves ``model`` under: ``<name>/<version>/model.onnx`` as in
    its own repository, or ``<stem>``, 1 for a loose file."""
    version_dir = model.parent
    if version_dir.name.isdigit():
        return version_dir.parent.name, version_dir.name
    return model.stem, "1"


def single_version_repository(model: Path) -> Path:
    """A repository (links under bench/results/tmp) that holds ``model`` as its only version."""
    name, version = served_as(model)
    root = ROOT / "bench" / "results" / "tmp" / f"repo-{name}-{version}"
    link = root / name / version / "model.onnx"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(model.resolve())
    return root


@contextlib.contextmanager
def serve(
    kind: str,
    model: Path,
    log_path: Path,
    settings: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
    variant: list[str] | None = None,
    root: Path = ROOT,
) -> Iterator[RunningServer]:
    """Run ``kind`` ("segserve" or "naive") serving ``model`` until the block exits; segserve
    from the source tree ``root`` (another checkout, for an A/B: ``bench.ab``)."""
    port = _free_port()
    env = segserve_env(model, port, settings or {}, root)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command_for(kind, model, port, variant),
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(kind, process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, then any of its descendants still alive (LitServe's workers outlive
    their parent otherwise); each by its own PID, SIGKILL only after a grace period."""
    tree = procstat.process_tree(process.pid) if process.poll() is None else [process.pid]
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    leftovers = [pid for pid in tree[1:] if _alive(pid)]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in leftovers):
        time.sleep(0.1)
    for pid in leftovers:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.kind} exited with {server.process.returncode}:\n"
                f"{server.log_path.read_text(errors='replace')[-4000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            ready_url = server.base_url + READY_PATHS.get(server.kind, "/readyz")
            if httpx.get(ready_url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{server.kind} not ready after {timeout_s}s")
