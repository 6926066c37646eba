"""Every architecture is fully convolutional: logits at the input's size (or, with an output
stride s, at ⌈H/s⌉ x ⌈W/s⌉), for any size and batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_export.architectures import ARCHITECTURES, build_model
from model_export.architectures.layers import Upsample, at_input_size, bilinear_kernel
from model_export.metrics import ConfusionMatrix

SIZES = [(1, 32, 32), (2, 45, 70), (3, 64, 33)]  # batch, height, width: not all stride multiples


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_logits_match_the_input_size_for_any_size_and_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, width=4).eval()
    s = ARCHITECTURES[name].output_stride
    with torch.inference_mode():
        for batch, height, width in SIZES:
            logits = model(torch.randn(batch, 3, height, width))
            assert logits.shape == (batch, 4, -(-height // s), -(-width // s))
            assert torch.isfinite(logits).all()


def test_a_stride_4_output_is_the_padded_input_s_scores_cropped_to_its_share() -> None:
    torch.manual_seed(0)
    model = build_model("lite-fcn", num_classes=3, width=8).eval()
    x = torch.randn(1, 3, 45, 70)
    padded = torch.zeros(1, 3, 64, 96)  # the next multiples of 32, zeros (the mean colour)
    padded[..., :45, :70] = x
    with torch.inference_mode():
        whole, cropped = model(padded), model(x)
    assert cropped.shape == (1, 3, 12, 18)
    assert torch.equal(cropped, whole[..., :12, :18])
    full = at_input_size(cropped, (48, 72))
    assert full.shape == (1, 3, 48, 72)
    assert at_input_size(full, (48, 72)) is full


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_trains(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, width=4).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-2)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(at_input_size(model(x), (32, 32)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_fcn_variants_use_their_skips() -> None:
    modules = {n: dict(build_model(n, 3, width=4).named_modules()) for n in ARCHITECTURES}
    assert not any("score_pool4" in k for k in modules["fcn32s-vgg"])
    assert any(k.endswith("score_pool4") for k in modules["fcn16s-vgg"])
    assert not any("score_pool3" in k for k in modules["fcn16s-vgg"])
    assert any(k.endswith("score_pool3") for k in modules["fcn8s-resnet"])
    assert any(isinstance(m, nn.MaxUnpool2d) for m in modules["deconvnet"].values())
    depthwise = [
        m for m in modules["mobile-fcn"].values()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    ]  # fmt: skip
    assert depthwise, "the mobile FCN must use depthwise convolutions"


def test_upsampling_starts_as_bilinear_interpolation() -> None:
    up = Upsample(channels=2, factor=4)
    assert up.weight.requires_grad, "FCN's upsampling is learnable"
    x = torch.zeros(1, 2, 6, 6)
    x[0, 0] = torch.arange(6.0).repeat(6, 1)  # a horizontal ramp
    x[0, 1] = 5.0
    y = up(x).detach()
    assert y.shape == (1, 2, 24, 24)
    # Away from the border a constant stays constant and a ramp stays a ramp, channel by channel.
    inner = y[0, :, 4:-4, 4:-4]
    assert torch.allclose(inner[1], torch.full_like(inner[1], 5.0))
    steps = inner[0].diff(dim=1)
    assert torch.allclose(steps, torch.full_like(steps, 0.25), atol=1e-5)
    kernel = bilinear_kernel(3, 4)
    assert kernel[0, 1].abs().sum() == 0
    assert kernel[1, 1].sum() > 0


def test_build_model_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture .unet.*mobile-fcn"):
        build_model("unet", 3)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("mobile-fcn", 1)


def test_confusion_matrix_scores_and_ignores_255() -> None:
    truth = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]]).numpy().astype("uint8")
    predicted = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]]).numpy().astype("uint8")
    confusion = ConfusionMatrix(["bg", "a", "b"])
    confusion.update(predicted, truth)
    scores = confusion.scores()
    # bg: tp 1, fp 1 (a 2 predicted 0), fn 1 -> 1/3; a: tp 2, fp 1 -> 2/3; b: tp 1, fn 1 -> 1/2
    assert scores.per_class_iou == pytest.approx({"bg": 1 / 3, "a": 2 / 3, "b": 1 / 2})
    assert scores.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert scores.pixel_accuracy == pytest.approx(4 / 6)
    absent = ConfusionMatrix(["bg", "a", "b"])
    absent.update(truth[:1, :2], truth[:1, :2])
    assert absent.scores().per_class_iou == {"bg": 1.0}, "classes never seen are not averaged"
