"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015).

Class scores from the stride-32 features are upsampled by learnable transposed convolutions
(initialised to bilinear); FCN-16s adds scores predicted from pool4, FCN-8s also from pool3.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model_export.architectures.backbones import ResNetBackbone, VGGBackbone
from model_export.architectures.layers import Upsample

Variant = Literal[32, 16, 8]


class FCN(nn.Module):
    def __init__(
        self,
        backbone: VGGBackbone | ResNetBackbone,
        head: nn.Module,
        head_channels: int,
        num_classes: int,
        variant: Variant,
    ) -> None:
        super().__init__()
        c8, c16, _ = backbone.channels
        self.backbone = backbone
        self.head = head
        self.variant = variant
        self.score_fr = nn.Conv2d(head_channels, num_classes, 1)
        if variant == 32:
            self.upscore = Upsample(num_classes, 32)
            return
        self.upscore2 = Upsample(num_classes, 2)
        self.score_pool4 = nn.Conv2d(c16, num_classes, 1)
        if variant == 16:
            self.upscore = Upsample(num_classes, 16)
            return
        self.upscore_pool4 = Upsample(num_classes, 2)
        self.score_pool3 = nn.Conv2d(c8, num_classes, 1)
        self.upscore = Upsample(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3, pool4, pool5 = self.backbone(x)
        score = self.score_fr(self.head(pool5))
        if self.variant <= 16:
            score = self.upscore2(score) + self.score_pool4(pool4)
        if self.variant == 8:
            score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return self.upscore(score)


def vgg_fcn(num_classes: int, variant: Variant, width: int = 64) -> FCN:
    """VGG-16 FCN: fc6/fc7 become a 7x7 and a 1x1 convolution (4096 channels at width 64)."""
    backbone = VGGBackbone(width)
    fc = 64 * width
    head = nn.Sequential(
        nn.Conv2d(backbone.channels[2], fc, 7, padding=3),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.5),
        nn.Conv2d(fc, fc, 1),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.5),
    )
    return FCN(backbone, head, fc, num_classes, variant)


def resnet_fcn(num_classes: int, variant: Variant, width: int = 32) -> FCN:
    backbone = ResNetBackbone(width)
    return FCN(backbone, nn.Identity(), backbone.channels[2], num_classes, variant)
