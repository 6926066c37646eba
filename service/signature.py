"""The one check that an ONNX model's tensors can be served and match its card.

It reads plain descriptions of the graph's inputs and outputs, so the service (from an ONNX
Runtime session) and ``model_export`` (from an ``onnx.ModelProto``) apply the same rules::

    x = Tensor("input", "float32", ("N", 3, 192, 192))
    y = Tensor("logits", "float32", ("N", 5, 48, 48))
    found = servable([x], [y])                        # Signature: NCHW float32 in, logits out
    check_tensors([x], [y], card, where=path)          # servable, and as the card says
    output_stride((192, 192), (48, 48))                # (4, 4), from a run's real shapes
    mask_stride((192, 192), (48, 48))                  # the same, refused past 1/32

A servable graph has one 4-D image input, (N, 3, H, W) or (N, H, W, 3), of float32, float16 or
uint8 (raw pixels), and serves one output: float scores (N, C, h, w) or integer class ids
(N, h, w) or (N, 1, h, w), at the input's size or a fraction of it (docs/MODEL.md). A graph with
several outputs names the one to serve. Each function raises ``SignatureError`` with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import ModelLoadError
from service.model_card import InputType, Layout, ModelCard

OutputKind = Literal["logits", "labels"]
Dim = int | str  # a fixed size, or a symbolic one ("N"; "?" when the graph does not say)

FLOATS = ("float32", "float16")
INPUT_TYPES: tuple[InputType, ...] = ("float32", "float16", "uint8")
INTEGERS = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
_CHANNEL_AXIS: dict[Layout, int] = {"NCHW": 1, "NHWC": 3}
# A reduced-resolution output is the input divided by a whole factor, give or take the rounding
# of odd sizes (SegFormer: 513 -> 129, 513 / 129 = 3.98).
_STRIDE_SLACK = 1.0
MAX_STRIDE = 32  # coarser than this is a pooled classifier output, not a mask


class SignatureError(ModelLoadError, ValueError):
    """The graph's tensors are not what the service can feed and read, or not what its card says.

    Also a ValueError: to a tool that checks a file it was handed (``model_export annotate``),
    this is bad input.
    """


@dataclass(frozen=True, slots=True)
class Tensor:
    """One graph input or output: its name, NumPy element type name and shape."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def describe(self, role: str) -> str:
        """``role``, name, type and shape, e.g. ``input x: float32[N, 3, 192, 192]``."""
        return f"{role} {self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True, slots=True)
class Signature:
    """What the service feeds and reads: the image input, its layout, and the served output."""

    input: Tensor
    layout: Layout
    output: Tensor
    kind: OutputKind

    @property
    def dtype(self) -> InputType:
        dtype: InputType = self.input.dtype  # type: ignore[assignment]  # checked by servable
        return dtype

    @property
    def size(self) -> tuple[Dim, Dim]:
        """The input's (height, width) as the graph declares them."""
        height, width = (1, 2) if self.layout == "NHWC" else (2, 3)
        return self.input.shape[height], self.input.shape[width]

    @property
    def classes(self) -> Dim | None:
        """The number of classes a scores output declares (None for labels)."""
        return self.output.shape[1] if self.kind == "logits" else None


def servable(
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    *,
    output: str | None = None,
    layout: Layout | None = None,
    where: Path | None = None,
) -> Signature:
    """The signature the service would serve: output ``output`` (None: the graph's only one),
    the input read as ``layout`` (None: the axis of size 3 says which; NCHW when neither or
    both do). Raises SignatureError, naming ``where`` when given, for anything else."""
    if len(inputs) != 1:
        raise _error(
            where,
            f"expected exactly one input (an image batch), found {len(inputs)}: "
            f"{[t.name for t in inputs]}",
        )
    (x,) = inputs
    if x.dtype not in INPUT_TYPES or len(x.shape) != 4:
        raise _error(
            where,
            f"input '{x.name}' must be a 4-D float32/float16/uint8 image tensor, (N, 3, H, W) "
            f"or (N, H, W, 3); found {x.describe('input')}",
        )
    if isinstance(x.shape[0], int) and x.shape[0] != 1:
        raise _error(
            where,
            f"input '{x.name}' takes batches of exactly {x.shape[0]} images; the service batches "
            "requests as they come: export with a dynamic batch dimension (or a batch of 1, "
            f"served one image at a time); found {x.describe('input')}",
        )
    axis = _CHANNEL_AXIS[layout or _layout(x)]
    if isinstance(x.shape[axis], int) and x.shape[axis] != 3:
        expected = f"in axis {axis} ({layout})" if layout else "(N, 3, H, W) or (N, H, W, 3)"
        raise _error(
            where,
            f"input '{x.name}' must have 3 (RGB) channels {expected}; found {x.describe('input')}",
        )
    y = _served_output(outputs, output, where)
    return Signature(x, layout or _layout(x), y, _kind(y, where))


def _layout(x: Tensor) -> Layout:
    """NHWC when only the last axis is a fixed 3; otherwise NCHW, PyTorch's export layout."""
    return "NHWC" if x.shape[3] == 3 and x.shape[1] != 3 else "NCHW"


def _served_output(outputs: Sequence[Tensor], name: str | None, where: Path | None) -> Tensor:
    names = [t.name for t in outputs]
    if name is None:
        if len(outputs) != 1:
            raise _error(
                where,
                f"the graph has {len(outputs)} outputs: {names}; name the one to serve "
                "(the card's output.name; annotate --output NAME)",
            )
        return outputs[0]
    for tensor in outputs:
        if tensor.name == name:
            return tensor
    raise _error(where, f"the graph has no output '{name}'; its outputs are {names}")


def _kind(y: Tensor, where: Path | None) -> OutputKind:
    rank = len(y.shape)
    if y.dtype in FLOATS and rank == 4:
        return "logits"
    if y.dtype in INTEGERS and (rank == 3 or (rank == 4 and y.shape[1] == 1)):
        return "labels"
    raise _error(
        where,
        f"output '{y.name}' must be float32/float16 scores (N, C, H, W) or integer labels "
        f"(N, H, W) or (N, 1, H, W); found {y.describe('output')}",
    )


def check_tensors(
    inputs: Sequence[Tensor], outputs: Sequence[Tensor], card: ModelCard, where: Path
) -> Signature:
    """The signature of the model at ``where``, refused unless it is ``servable`` as its card
    says: output name and kind, input layout, size and dtype, number of classes. Raises
    SignatureError."""
    spec = card.input
    found = servable(inputs, outputs, output=card.output.name, layout=spec.layout, where=where)
    if any(
        isinstance(dim, int) and dim != want
        for dim, want in zip(found.size, (spec.height, spec.width), strict=True)
    ):
        raise _error(
            where,
            f"input shape {list(found.input.shape)} ({spec.layout}) does not match the card's "
            f"{spec.height} x {spec.width}",
        )
    if found.dtype != spec.dtype:
        raise _error(where, f"input type {found.dtype} but the card says {spec.dtype}")
    if found.kind != card.output.kind:
        raise _error(
            where,
            f"output '{found.output.name}' holds {found.kind} ({found.output.describe('output')})"
            f" but the card says {card.output.kind}",
        )
    if isinstance(found.classes, int) and found.classes != card.num_classes:
        raise _error(
            where, f"the model scores {found.classes} classes, the card lists {card.num_classes}"
        )
    return found


def output_stride(
    input_size: tuple[int, int], output_size: tuple[int, int], where: Path | None = None
) -> tuple[int, int]:
    """The whole factor (rows, columns) by which an output of ``output_size`` (h, w) is smaller
    than the input of ``input_size`` (H, W) it came from: (1, 1) at full size, (4, 4) for
    SegFormer. Raises SignatureError when an axis is not the input's divided by a whole factor
    (give or take the rounding of odd sizes): such an output is not an image of the input."""
    strides = []
    for axis, n_in, n_out in zip(("height", "width"), input_size, output_size, strict=True):
        factor = round(n_in / n_out) if n_out else 0
        if factor < 1 or abs(n_in / factor - n_out) >= _STRIDE_SLACK:
            raise _error(
                where,
                f"for a {input_size[0]}x{input_size[1]} input the output is "
                f"{output_size[0]}x{output_size[1]}: its {axis} is not the input's divided by a "
                "whole factor, so it is not an image of the input",
            )
        strides.append(factor)
    return strides[0], strides[1]


def mask_stride(
    input_size: tuple[int, int], output_size: tuple[int, int], where: Path | None = None
) -> tuple[int, int]:
    """``output_stride``, refused past 1/``MAX_STRIDE``: what the service serves as a mask."""
    stride = output_stride(input_size, output_size, where)
    if max(stride) > MAX_STRIDE:
        raise _error(
            where,
            f"for a {input_size[0]}x{input_size[1]} input the output is "
            f"{output_size[0]}x{output_size[1]}: coarser than 1/{MAX_STRIDE}, a pooled output, "
            "not a mask",
        )
    return stride


def _error(where: Path | None, reason: str) -> SignatureError:
    return SignatureError(reason if where is None else f"{where}: {reason}")
