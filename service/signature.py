"""The one check that an ONNX model's tensors can be served and match its card.

It reads plain descriptions of the graph's inputs and outputs, so the service (from an ONNX
Runtime session) and ``model_export`` (from an ``onnx.ModelProto``) apply the same rules::

    x = Tensor("input", "float32", ("N", 3, 192, 192))
    y = Tensor("logits", "float32", ("N", 5, 192, 192))
    dtype, kind = servable([x], [y])                 # ("float32", "logits")
    check_tensors([x], [y], card, where=path)         # servable, and as the card says

A servable graph has one 4-D float input (N, 3, H, W) and one output: float logits (N, C, H, W)
or uint8 labels (N, H, W) (docs/MODEL.md). Both raise ``SignatureError`` with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import ModelLoadError
from service.model_card import ModelCard

OutputKind = Literal["logits", "labels"]
Dim = int | str  # a fixed size, or a symbolic one ("N"; "?" when the graph does not say)

_FLOATS = ("float32", "float16")


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


def servable(
    inputs: Sequence[Tensor], outputs: Sequence[Tensor], where: Path | None = None
) -> tuple[str, OutputKind]:
    """(input dtype, output kind) of a graph the service can serve.

    Raises SignatureError, naming ``where`` when given, for anything else.
    """
    if len(inputs) != 1:
        raise _error(
            where,
            f"expected exactly one input (an image batch), found {len(inputs)}: "
            f"{[t.name for t in inputs]}",
        )
    (x,) = inputs
    if x.dtype not in _FLOATS or len(x.shape) != 4:
        raise _error(
            where,
            f"input '{x.name}' must be a 4-D float32/float16 tensor (N, 3, H, W); "
            f"found {x.describe('input')}",
        )
    if isinstance(x.shape[1], int) and x.shape[1] != 3:
        raise _error(
            where,
            f"input '{x.name}' must have 3 (RGB) channels in axis 1, NCHW; found {x.shape[1]}",
        )
    if len(outputs) != 1:
        raise _error(
            where, f"expected exactly one output, found {len(outputs)}: {[t.name for t in outputs]}"
        )
    (y,) = outputs
    if y.dtype in _FLOATS and len(y.shape) == 4:
        return x.dtype, "logits"
    if y.dtype == "uint8" and len(y.shape) == 3:
        return x.dtype, "labels"
    raise _error(
        where,
        f"output '{y.name}' must be float logits (N, C, H, W) or uint8 labels (N, H, W); "
        f"found {y.describe('output')}",
    )


def check_tensors(
    inputs: Sequence[Tensor], outputs: Sequence[Tensor], card: ModelCard, where: Path
) -> None:
    """Refuse the model at ``where`` unless it is ``servable`` and its tensors are as ``card``
    says: input size and dtype, output kind and number of classes. Raises SignatureError."""
    dtype, kind = servable(inputs, outputs, where)
    (x,), (y,) = inputs, outputs
    spec = card.input
    expected = (None, 3, spec.height, spec.width)
    if any(
        isinstance(dim, int) and want is not None and dim != want
        for dim, want in zip(x.shape, expected, strict=True)
    ):
        raise _error(
            where,
            f"input shape {list(x.shape)} does not match the card's "
            f"N x 3 x {spec.height} x {spec.width}",
        )
    if dtype != spec.dtype:
        raise _error(where, f"input type {dtype} but the card says {spec.dtype}")
    if kind != card.output.kind:
        rank = 4 if card.output.kind == "logits" else 3
        raise _error(
            where,
            f"output '{y.name}' has rank {len(y.shape)}, a '{card.output.kind}' output has {rank}",
        )
    if kind == "logits" and isinstance(y.shape[1], int) and y.shape[1] != card.num_classes:
        raise _error(
            where, f"the model scores {y.shape[1]} classes, the card lists {card.num_classes}"
        )


def _error(where: Path | None, reason: str) -> SignatureError:
    return SignatureError(reason if where is None else f"{where}: {reason}")
