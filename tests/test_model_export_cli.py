"""The train command's options are TrainConfig's fields, with TrainConfig's defaults."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from model_export.__main__ import _parser
from model_export.checkpoint import TrainConfig
from model_export.commands import train_config
from tests.support import ROOT


def test_train_without_options_is_the_default_config() -> None:
    assert train_config(_parser().parse_args(["train"])) == TrainConfig()


def test_every_config_field_is_a_train_option() -> None:
    args = vars(_parser().parse_args(["train"]))
    assert {f.name for f in fields(TrainConfig)} <= args.keys()


def test_train_options_reach_the_config() -> None:
    argv = ["train", "--name", "x", "--no-augment", "--data-root", "/data", "--lr", "0.1"]
    config = train_config(_parser().parse_args(argv))
    assert (config.name, config.augment, config.data_root, config.lr) == ("x", False, "/data", 0.1)
    assert config.run_dir == "runs/x"


def test_every_option_of_every_command_says_what_it_is() -> None:
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, command in commands.items():
        for action in command._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest}"


def test_evaluate_takes_the_model_as_inspect_and_annotate_do(tmp_path: Path) -> None:
    args = _parser().parse_args(["evaluate", "models/shapes-fcn/1/model.onnx", "--length", "2"])
    assert args.model == Path("models/shapes-fcn/1/model.onnx")
    assert _parser().parse_args(["evaluate", "--onnx", "m.onnx"]).onnx == Path("m.onnx")


ANNOTATE = ["--name", "m", "--labels", "background,thing", "--input-size", "8x8"]


@pytest.mark.parametrize(
    "command", [["evaluate"], ["inspect"], ["annotate", *ANNOTATE]], ids=lambda c: c[0]
)
def test_a_file_that_is_not_onnx_is_one_clear_line(command: list[str], tmp_path: Path) -> None:
    not_onnx = tmp_path / "photo.onnx"
    not_onnx.write_bytes(b"\xff\xd8\xff\xe0 this is a JPEG, not a model" * 10)
    run = subprocess.run(
        [sys.executable, "-m", "model_export", command[0], str(not_onnx), *command[1:]],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert f"{not_onnx}: not an ONNX model" in run.stderr
    assert "Traceback" not in run.stderr
