"""Building blocks shared by the architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """(channels, channels, k, k) weights that make a transposed conv a bilinear upsampler:
    a separable tent per channel, none across channels (Long et al., Sec. 3.3)."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float32)
    tent = 1 - (og - centre).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = tent[:, None] * tent[None, :]
    return weight


class Upsample(nn.ConvTranspose2d):
    """Learnable ×``factor`` upsampling initialised to bilinear interpolation.
    kernel 2f, stride f, padding f/2 maps an (h, w) map to exactly (f·h, f·w)."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__(
            channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
        )
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, 2 * factor))


class Bilinear(nn.Module):
    """Fixed ×``factor`` bilinear upsampling (half-pixel centres): no weights, and on CPU a
    fraction of a learned ``Upsample``'s cost, which is a dense channels² transposed conv."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)


def top_down(
    skips: list[torch.Tensor], lateral: nn.ModuleList, up: nn.ModuleList, refine: nn.ModuleList
) -> torch.Tensor:
    """The FCN-style decoder of the mobile and lite FCNs: from the deepest skip up, each step
    upsamples ×2, adds the next shallower skip (through its 1x1 ``lateral``) and refines."""
    y = lateral[-1](skips[-1])
    for i in reversed(range(len(up))):
        y = refine[i](up[i](y) + lateral[i](skips[i]))
    return y


class PadToMultiple(nn.Module):
    """Wraps a network whose strides need H and W divisible by ``multiple``: zero-pads the input
    (zero is the mean colour after normalisation) on the bottom/right, crops the output back to
    the input's share of it: (H, W) for a full-size output, (⌈H/s⌉, ⌈W/s⌉) for one of stride s."""

    def __init__(self, net: nn.Module, multiple: int, output_stride: int = 1) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h = (self.multiple - h % self.multiple) % self.multiple
        pad_w = (self.multiple - w % self.multiple) % self.multiple
        y = self.net(F.pad(x, (0, pad_w, 0, pad_h)))
        s = self.output_stride
        return y[..., : -(-h // s), : -(-w // s)]


def at_input_size(logits: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Logits of a smaller output scaled bilinearly (half-pixel centres) to ``size`` (H, W), as
    the service scales them; full-size logits as they are."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
