"""The train command's options are TrainConfig's fields, with TrainConfig's defaults."""

from __future__ import annotations

from dataclasses import fields

from model_export.__main__ import _parser
from model_export.checkpoint import TrainConfig
from model_export.commands import train_config


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
