"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation",
ICCV 2015): a VGG-16 encoder whose max-pooling switches (argmax indices) are kept, and a mirrored
decoder that max-unpools with them, each unpooling followed by "deconvolution" layers
(3x3 transposed convolutions with batch norm), ending in a 1x1 class score layer.

The paper's fc6/fc7 (7x7 to 1x1) bottleneck fixes the input size; here they are 3x3 convolutions
so the network stays fully convolutional.
"""

from __future__ import annotations

import torch
from torch import nn

from model_export.architectures.backbones import VGG16_CONVS, vgg16_encoder, vgg16_widths


def deconv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DeconvNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        widths = vgg16_widths(width)
        self.encoder = vgg16_encoder(widths)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        fc = 8 * widths[-1]
        self.bottleneck = nn.Sequential(
            nn.Conv2d(widths[-1], fc, 3, padding=1, bias=False),
            nn.BatchNorm2d(fc),
            nn.ReLU(True),
            nn.Conv2d(fc, fc, 1, bias=False),
            nn.BatchNorm2d(fc),
            nn.ReLU(True),
            deconv_bn_relu(fc, widths[-1]),
        )
        self.unpool = nn.MaxUnpool2d(2, 2)
        # Mirror of the encoder: block i restores widths[i]'s resolution and ends at the width
        # the next (shallower) unpooling expects.
        c_outs = (width, *widths[:-1])
        self.decoder = nn.ModuleList(
            nn.Sequential(*[deconv_bn_relu(c, c) for _ in range(n - 1)], deconv_bn_relu(c, c_out))
            for c, c_out, n in zip(widths, c_outs, VGG16_CONVS, strict=True)
        )
        self.score = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        switches = []
        for block in self.encoder:
            x, indices = self.pool(block(x))
            switches.append(indices)
        x = self.bottleneck(x)
        for block, indices in zip(reversed(self.decoder), reversed(switches), strict=True):
            x = block(self.unpool(x, indices))
        return self.score(x)
