"""Give an ONNX model made elsewhere a model card, after learning how to serve it as it is.

The graph must be servable by the rules the service loads models with (``service.signature``).
From the graph and one run in ONNX Runtime on a probe input of the card's size, ``learn`` finds
the input's name, layout and type, the output to serve, whether it holds scores or labels, how
many classes it scores and the output's stride (input size / output size: the service scales a
smaller output to the input's size). ``annotate`` then writes the card, refusing with the
reason what cannot be served::

    learned = learn(path, (512, 512), output="logits")   # SignatureError: why not
    card = annotated_card(card, learned)                 # the card with what was learned
    print("\\n".join(learned.summary()))
    annotate(path, card, out)                            # all three, then write the card
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from model_export.card import load_onnx, write_card
from service.model_card import IMAGENET_MEAN, IMAGENET_STD, InputSpec, Layout, ModelCard
from service.signature import Signature, SignatureError, Tensor, mask_stride, servable


def signature(model: onnx.ModelProto) -> str:
    """Human-readable I/O signature, e.g. ``input: float32[N, 3, 192, 192]``."""
    inputs, outputs = _tensors(model)
    lines = [t.describe("input") for t in inputs] + [t.describe("output") for t in outputs]
    return "\n".join(lines)


def graph_signature(
    model: onnx.ModelProto, *, output: str | None = None, layout: Layout | None = None
) -> Signature:
    """The signature the service would serve (``service.signature.servable``); SignatureError
    explains what is not servable."""
    return servable(*_tensors(model), output=output, layout=layout)


def _tensors(model: onnx.ModelProto) -> tuple[list[Tensor], list[Tensor]]:
    # Older exporters list initializers as graph inputs too; those are weights, not inputs.
    weights = {init.name for init in model.graph.initializer}
    inputs = [_tensor(v) for v in model.graph.input if v.name not in weights]
    return inputs, [_tensor(v) for v in model.graph.output]


def _tensor(value: onnx.ValueInfoProto) -> Tensor:
    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape = tuple(d.dim_param or d.dim_value or "?" for d in tensor_type.shape.dim)
    return Tensor(value.name, dtype, shape)


def fixed_size(found: Signature) -> tuple[int, int] | None:
    """The (height, width) the graph's input is fixed to, or None when it takes any size."""
    height, width = found.size
    return (height, width) if isinstance(height, int) and isinstance(width, int) else None


@dataclass(frozen=True, slots=True)
class Learned:
    """What the graph and one run on a probe input say about serving it."""

    signature: Signature
    size: tuple[int, int]  # the probe's (height, width): the card's input size
    output_shape: tuple[int, ...]  # the served output's, for a batch of one
    stride: tuple[int, int]  # input size / output size, per axis
    other_outputs: tuple[str, ...]  # the graph's outputs that are not served

    @property
    def classes(self) -> int | None:
        """The number of classes a scores output has (None for labels)."""
        return self.output_shape[1] if self.signature.kind == "logits" else None

    def summary(self) -> list[str]:
        """What was learned, one fact a line."""
        found, (height, width) = self.signature, self.size
        x, y = found.input, found.output
        out_h, out_w = self.output_shape[-2:]
        rows, cols = self.stride
        stride = str(rows) if rows == cols else f"{rows}x{cols} (rows x columns)"
        what = f"scores of {self.classes} classes" if found.kind == "logits" else "class ids"
        lines = [
            f"input   '{x.name}' {found.dtype} {found.layout} {list(x.shape)}, "
            f"probed at {height}x{width}",
            f"output  '{y.name}' {y.dtype} {what}, {out_h}x{out_w}: stride {stride}"
            + ("" if stride == "1" else " (the service scales it to the input size)"),
        ]
        if self.other_outputs:
            lines.append(f"not served: {', '.join(repr(n) for n in self.other_outputs)}")
        if found.dtype == "uint8":
            lines.append("pixels  0..255 as they are (the graph normalises them)")
        return lines


def learn(
    path: Path, size: tuple[int, int], *, output: str | None = None, layout: Layout | None = None
) -> Learned:
    """Check the graph in ``path`` (output ``output``, input ``layout``: None to find out) and
    run it once on a probe input of ``size`` (height, width). Raises SignatureError with the
    reason when it cannot be served."""
    model = load_onnx(path, external_data=False)
    inputs, outputs = _tensors(model)
    found = servable(inputs, outputs, output=output, layout=layout)
    fixed = fixed_size(found)
    if fixed is not None and fixed != size:
        raise SignatureError(
            f"the graph takes only {fixed[0]}x{fixed[1]} inputs, not {size[0]}x{size[1]}: "
            "leave --input-size out, or give that size"
        )
    shape = _run_once(path, found, size)
    if len(shape) != len(found.output.shape) or shape[0] != 1:
        raise SignatureError(
            f"for a batch of one the output '{found.output.name}' has shape {shape}, not "
            f"{found.output.describe('output')}"
        )
    stride = mask_stride(size, (shape[-2], shape[-1]))
    others = tuple(t.name for t in outputs if t.name != found.output.name)
    return Learned(found, size, shape, stride, others)


def _run_once(path: Path, found: Signature, size: tuple[int, int]) -> tuple[int, ...]:
    """The served output's shape for a probe input (zeros) of ``size``."""
    height, width = size
    shape = (1, height, width, 3) if found.layout == "NHWC" else (1, 3, height, width)
    x = np.zeros(shape, dtype=found.dtype)
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # a failed probe is said once, below, not in ORT's log too
    session = ort.InferenceSession(str(path), quiet, providers=["CPUExecutionProvider"])
    try:
        (y,) = session.run([found.output.name], {found.input.name: x})
    except Exception as exc:  # ORT raises its own exception types; say what was tried
        reason = " ".join(str(exc).split())  # one line
        raise SignatureError(
            f"the model failed to run on a {shape} {found.dtype} input ({height}x{width}, "
            f"{found.layout}); give the size it takes with --input-size HxW: {reason}"
        ) from exc
    return tuple(y.shape)


def annotated_card(card: ModelCard, learned: Learned) -> ModelCard:
    """``card`` with what ``learned`` found: input layout and type, output kind and name (set
    when the graph has several). Raises SignatureError when the card contradicts it."""
    found = learned.signature
    if learned.classes is not None and learned.classes != card.num_classes:
        raise SignatureError(
            f"the model scores {learned.classes} classes; the card lists {card.num_classes} labels"
        )
    if found.dtype == "uint8" and (card.input.mean, card.input.std) != (
        IMAGENET_MEAN,
        IMAGENET_STD,
    ):
        raise SignatureError(
            f"input '{found.input.name}' takes uint8 pixels, which the graph normalises itself: "
            "mean and std do not apply (leave --mean and --std out)"
        )
    spec = card.input.model_dump() | {"dtype": found.dtype, "layout": found.layout}
    output = {"kind": found.kind, "name": found.output.name if learned.other_outputs else None}
    return ModelCard.model_validate(
        card.model_dump() | {"input": InputSpec(**spec).model_dump(), "output": output}
    )


def annotate(
    path: Path,
    card: ModelCard,
    out: Path | None = None,
    *,
    output: str | None = None,
    layout: Layout | None = None,
) -> ModelCard:
    """Learn how to serve ``path`` at ``card``'s input size (``learn``), then write ``card`` with
    what was learned (``annotated_card``) into it, in place or to ``out``. Returns the card
    written. Raises SignatureError, and writes nothing, when the model cannot be served."""
    spec = card.input
    learned = learn(
        path, (spec.height, spec.width), output=output or card.output.name, layout=layout
    )
    written = annotated_card(card, learned)
    write_card(path, written, out)
    return written
