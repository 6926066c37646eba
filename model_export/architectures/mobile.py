"""A light FCN for CPU serving: a depthwise-separable (MobileNet-style) encoder and an FCN-style
decoder that upsamples ×2 with learnable bilinear-initialised transposed convolutions and adds
skips from strides 16, 8, 4 and 2. Unlike FCN-8s it fuses narrow feature maps rather than class
scores, and reaches stride 2 before the last upsampling, which keeps shape boundaries sharp
for a few hundred MFLOPs."""

from __future__ import annotations

import torch
from torch import nn

from model_export.architectures.layers import Upsample, conv_bn_relu, top_down


def separable(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MobileFCN(nn.Module):
    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        widths = (w, 2 * w, 4 * w, 8 * w, 16 * w)  # at strides 2, 4, 8, 16, 32
        self.stages = nn.ModuleList([
            conv_bn_relu(3, w, stride=2),
            separable(w, 2 * w, stride=2),
            nn.Sequential(separable(2 * w, 4 * w, stride=2), separable(4 * w, 4 * w)),
            nn.Sequential(separable(4 * w, 8 * w, stride=2), separable(8 * w, 8 * w)),
            nn.Sequential(  # the widest, cheapest place for context
                separable(8 * w, 16 * w, stride=2), separable(16 * w, 16 * w),
                separable(16 * w, 16 * w),
            ),
        ])  # fmt: skip
        d = 2 * w  # decoder width
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in widths)
        self.up = nn.ModuleList(Upsample(d, 2) for _ in widths[:-1])
        self.refine = nn.ModuleList(separable(d, d) for _ in widths[:-1])
        self.score = nn.Conv2d(d, num_classes, 1)
        self.upscore = Upsample(num_classes, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.upscore(self.score(top_down(skips, self.lateral, self.up, self.refine)))
