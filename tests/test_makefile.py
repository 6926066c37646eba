"""The Makefile's install rules, run by the real ``make`` against a stand-in venv whose ``pip``
keeps a list of what is installed: switching ONNX Runtime build never leaves both in one venv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

# A pip that records installs and uninstalls in .venv/installed, and a python that "serves".
_FAKE_PIP = """#!/usr/bin/env bash
state="$(dirname "$0")/../installed"; touch "$state"
case "$1" in
  show) for a in "$@"; do grep -qx -- "$a" "$state" && exit 0; done; exit 1 ;;
  uninstall) for a in "${@:2}"; do
      grep -vx -- "$a" "$state" > "$state.new"; mv "$state.new" "$state"; done ;;
  install) for a in "$@"; do case "$a" in
      ".[gpu]") echo onnxruntime-gpu >> "$state" ;;
      ".[cpu]"|".[cpu,train,dev]") echo onnxruntime >> "$state" ;;
    esac; done ;;
esac
"""
_FAKE_PYTHON = "#!/usr/bin/env bash\necho served\n"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("pip", _FAKE_PIP), ("python", _FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def make(checkout: Path, *args: str) -> list[str]:
    """Run ``make`` in ``checkout``; the ONNX Runtime packages installed afterwards."""
    subprocess.run(["make", *args], cwd=checkout, check=True, capture_output=True, timeout=60)
    return sorted((checkout / ".venv" / "installed").read_text().split())


def test_serve_then_gpu_then_serve_again_switches_each_time(checkout: Path) -> None:
    assert make(checkout, "serve") == ["onnxruntime"]
    assert make(checkout, "serve", "ORT=gpu") == ["onnxruntime-gpu"]
    assert make(checkout, "serve") == ["onnxruntime"]
    assert make(checkout, "serve") == ["onnxruntime"]  # nothing to switch: nothing changes


def test_the_test_install_takes_back_the_cpu_build(checkout: Path) -> None:
    assert make(checkout, "serve", "ORT=gpu") == ["onnxruntime-gpu"]
    assert make(checkout, ".venv/.dev") == ["onnxruntime"]
