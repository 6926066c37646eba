"""Warm start: an exported model's weights come back into PyTorch, batch norms refitted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import Checkpoint, TrainConfig
from model_export.export import export
from model_export.warm_start import load_checkpoint, load_exported
from service.model_card import InputSpec, ModelCard


def _exported(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("mobile-fcn", 3, 4)
    with torch.no_grad():  # batch norms that are not the identity, so folding matters
        for parameter in model.parameters():  # and no two upsamplers left equal (the exporter
            parameter.add_(0.01 * torch.randn_like(parameter))  # would share their initialiser)
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    card = ModelCard.with_default_colors(
        ["background", "a", "b"], name="warm", input=InputSpec(height=32, width=32)
    )
    path = tmp_path / "warm.onnx"
    export(model.eval(), card, path, parity_seed=0)
    return model, path


def test_exported_weights_come_back_exactly_in_eval_mode(tmp_path: Path) -> None:
    original, path = _exported(tmp_path)
    fresh = build_model("mobile-fcn", 3, 4)
    calibration = torch.randn(4, 3, 64, 64)
    assert load_exported(fresh, path, calibration) < 1e-4
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), original.eval()(x), atol=1e-4, rtol=1e-4)
        # In train mode the batch's own statistics stand in; on the calibration batch they are
        # the refitted ones, so the function is unchanged there too.
        torch.testing.assert_close(
            fresh.train()(calibration), original.eval()(calibration), atol=1e-3, rtol=1e-3
        )


def test_another_architecture_width_is_refused(tmp_path: Path) -> None:
    _, path = _exported(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        load_exported(build_model("mobile-fcn", 3, 8), path, torch.randn(2, 3, 32, 32))


def _checkpoint(tmp_path: Path, architecture: str, width: int) -> Path:
    torch.manual_seed(1)
    model = build_model(architecture, 3, width)
    config = TrainConfig(architecture=architecture, width=width)
    path = tmp_path / "last.pt"
    Checkpoint(config, ["background", "a", "b"], model.state_dict()).save(path)
    return path


def test_a_checkpoint_of_a_sibling_architecture_gives_every_weight_the_model_has(
    tmp_path: Path,
) -> None:
    path = _checkpoint(tmp_path, "lite-fcn", 8)
    saved = Checkpoint.load(path).state_dict
    model = build_model("lite-fcn-bilinear", 3, 8)
    unused = load_checkpoint(model, path)
    assert unused == [f"net.up.{i}.weight" for i in range(3)]  # the learned upsamplers
    for name, tensor in model.state_dict().items():  # batch-norm statistics included
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)


def test_a_checkpoint_without_one_of_the_model_s_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"net\.up\.0\.weight: missing"):
        load_checkpoint(
            build_model("lite-fcn", 3, 8), _checkpoint(tmp_path, "lite-fcn-bilinear", 8)
        )
    with pytest.raises(ValueError, match="another shape"):
        load_checkpoint(build_model("lite-fcn", 3, 16), _checkpoint(tmp_path, "lite-fcn", 8))
