"""A lighter FCN for serving at the image's own resolution: the mobile FCN's separable encoder
reached through a cheap stride-4 stem, and a decoder that stops at stride 4. Feature maps at
strides 1 and 2 are what make a network expensive per pixel; this one never holds one wider than
the stem's half-width map, so a 640x480 image costs about what the mobile FCN costs at 320x240,
while objects a few pixels across stay visible (4 is DeepLab's output stride too).

Its class scores are 1/4 of the input's size; they are scaled up bilinearly where a full-size
answer is needed (``layers.at_input_size`` in training, the service's ``resampling`` when
served, which blends only the pixels at class boundaries).

Its decoder upsamples either with learned transposed convs (``upsampling="learned"``, as the
FCNs do) or bilinearly (``"bilinear"``): at width 32 the learned ones are half of the network's
CPU time at 640x480, for 0.01-0.04 of mIoU (docs/MODEL.md: shapes-fcn versions 3 and 4)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model_export.architectures.layers import Bilinear, Upsample, conv_bn_relu, top_down
from model_export.architectures.mobile import separable


def _stage(c_in: int, c_out: int, depth: int) -> nn.Sequential:
    return nn.Sequential(
        separable(c_in, c_out, stride=2), *(separable(c_out, c_out) for _ in range(depth - 1))
    )


class LiteFCN(nn.Module):
    output_stride = 4

    def __init__(
        self,
        num_classes: int,
        width: int = 32,
        upsampling: Literal["learned", "bilinear"] = "learned",
    ) -> None:
        super().__init__()
        w = width
        widths = (w, 2 * w, 4 * w, 8 * w)  # at strides 4, 8, 16, 32
        self.stem = nn.Sequential(conv_bn_relu(3, w // 2, stride=2), separable(w // 2, w, stride=2))
        self.stages = nn.ModuleList([
            separable(w, w),
            _stage(w, 2 * w, 2),
            _stage(2 * w, 4 * w, 2),
            _stage(4 * w, 8 * w, 3),  # the widest, cheapest place for context
        ])  # fmt: skip
        self.lateral = nn.ModuleList(nn.Conv2d(c, w, 1) for c in widths)
        up = (lambda: Upsample(w, 2)) if upsampling == "learned" else (lambda: Bilinear(2))
        self.up = nn.ModuleList(up() for _ in widths[:-1])
        self.refine = nn.ModuleList(separable(w, w) for _ in widths[:-1])
        self.score = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.score(top_down(skips, self.lateral, self.up, self.refine))
