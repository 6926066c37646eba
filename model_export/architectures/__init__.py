"""Architectures by name. Every model maps (N, 3, H, W) normalised RGB to (N, C, h, w) logits for
any H and W: inputs are padded to the total stride (32) and the logits cropped back, to the
input's size or, for an architecture whose output stride is s > 1, to (⌈H/s⌉, ⌈W/s⌉)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from model_export.architectures.deconvnet import DeconvNet
from model_export.architectures.fcn import resnet_fcn, vgg_fcn
from model_export.architectures.layers import PadToMultiple
from model_export.architectures.lite import LiteFCN
from model_export.architectures.mobile import MobileFCN

TOTAL_STRIDE = 32  # the deepest features' stride: inputs are padded to a multiple of it


@dataclass(frozen=True)
class Architecture:
    build: Callable[[int, int], nn.Module]  # (num_classes, width) -> module
    default_width: int
    backbone: str
    output_stride: int = 1  # input size / logits size


ARCHITECTURES: dict[str, Architecture] = {
    "fcn32s-vgg": Architecture(lambda c, w: vgg_fcn(c, 32, w), 64, "vgg16"),
    "fcn16s-vgg": Architecture(lambda c, w: vgg_fcn(c, 16, w), 64, "vgg16"),
    "fcn8s-vgg": Architecture(lambda c, w: vgg_fcn(c, 8, w), 64, "vgg16"),
    "fcn32s-resnet": Architecture(lambda c, w: resnet_fcn(c, 32, w), 32, "resnet18-small"),
    "fcn16s-resnet": Architecture(lambda c, w: resnet_fcn(c, 16, w), 32, "resnet18-small"),
    "fcn8s-resnet": Architecture(lambda c, w: resnet_fcn(c, 8, w), 32, "resnet18-small"),
    "deconvnet": Architecture(DeconvNet, 64, "vgg16"),
    "mobile-fcn": Architecture(MobileFCN, 16, "mobilenet-separable"),
    "lite-fcn": Architecture(LiteFCN, 32, "mobilenet-separable", LiteFCN.output_stride),
    "lite-fcn-bilinear": Architecture(
        lambda c, w: LiteFCN(c, w, upsampling="bilinear"),
        32,
        "mobilenet-separable",
        LiteFCN.output_stride,
    ),
}


def build_model(name: str, num_classes: int, width: int | None = None) -> nn.Module:
    """A freshly initialised model; ``width`` scales every layer (defaults to the paper's)."""
    try:
        arch = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture '{name}'; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    if num_classes < 2:
        raise ValueError("num_classes must be at least 2")
    net = arch.build(num_classes, width or arch.default_width)
    return PadToMultiple(net, TOTAL_STRIDE, arch.output_stride)
