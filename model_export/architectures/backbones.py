"""Encoders returning the feature maps at strides 8, 16 and 32 (FCN's pool3, pool4, pool5)."""

from __future__ import annotations

import torch
from torch import nn

from model_export.architectures.layers import conv_bn_relu

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def vgg_block(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    layers = [conv_bn_relu(c_in if i == 0 else c_out, c_out) for i in range(convs)]
    return nn.Sequential(*layers)


VGG16_CONVS = (2, 2, 3, 3, 3)


def vgg16_widths(width: int) -> tuple[int, ...]:
    return (width, 2 * width, 4 * width, 8 * width, 8 * width)


def vgg16_encoder(widths: tuple[int, ...]) -> nn.ModuleList:
    """VGG-16's five conv blocks (no pooling) for ``vgg16_widths(width)``."""
    c_ins = (3, *widths[:-1])
    return nn.ModuleList(
        vgg_block(c_in, c_out, n) for c_in, c_out, n in zip(c_ins, widths, VGG16_CONVS, strict=True)
    )


class VGGBackbone(nn.Module):
    """VGG-16 (five conv blocks, each closed by 2x2 max-pooling) with batch norm, which lets it
    train from scratch. ``width`` is the first block's channels (64 in VGG-16)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        widths = vgg16_widths(width)
        self.blocks = vgg16_encoder(widths)
        self.pool = nn.MaxPool2d(2, 2)
        self.channels = (widths[2], widths[3], widths[4])

    def forward(self, x: torch.Tensor) -> Features:
        pooled = []
        for block in self.blocks:
            x = self.pool(block(x))
            pooled.append(x)
        return pooled[2], pooled[3], pooled[4]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out, stride=stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """A small ResNet-18-style encoder: stride-2 stem, then four stages of two basic blocks, each
    stage halving the resolution (strides 4, 8, 16, 32)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, width, stride=2), conv_bn_relu(width, width))
        widths = (width, 2 * width, 4 * width, 8 * width)
        c_ins = (width, *widths[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(c_in, c_out, stride=2), BasicBlock(c_out, c_out, stride=1))
            for c_in, c_out in zip(c_ins, widths, strict=True)
        )
        self.channels = (widths[1], widths[2], widths[3])

    def forward(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[1], outs[2], outs[3]
