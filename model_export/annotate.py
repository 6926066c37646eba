"""Give an ONNX model made elsewhere a model card, after checking it can be served.

The graph must be servable by the rules the service loads models with (``service.signature``:
one 4-D float input (N, 3, H, W) and one output, float logits (N, C, H, W) or uint8 labels
(N, H, W)). The model is run once in ONNX Runtime at the card's input size, and its output must
have the card's number of classes, before the card is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from model_export.card import load_onnx, write_card
from service.model_card import ModelCard
from service.signature import OutputKind, SignatureError, Tensor, servable


def signature(model: onnx.ModelProto) -> str:
    """Human-readable I/O signature, e.g. ``input: float32[N, 3, 192, 192]``."""
    inputs, outputs = _tensors(model)
    lines = [t.describe("input") for t in inputs] + [t.describe("output") for t in outputs]
    return "\n".join(lines)


def graph_signature(model: onnx.ModelProto) -> tuple[str, OutputKind]:
    """(input dtype, output kind) of a servable graph; ``SignatureError`` explains what is not."""
    return servable(*_tensors(model))


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


def annotate(path: Path, card: ModelCard, out: Path | None = None) -> ModelCard:
    """Check ``path``, run it once, then write ``card`` (input dtype and output kind taken from
    the graph) into it, in place or to ``out``. Returns the card written."""
    model = load_onnx(path, external_data=False)
    dtype, kind = graph_signature(model)
    card = card.model_copy(
        update={
            "input": card.input.model_copy(update={"dtype": dtype}),
            "output": card.output.model_copy(update={"kind": kind}),
        }
    )
    _run_once(path, card)
    write_card(path, card, out)
    return card


def _run_once(path: Path, card: ModelCard) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = card.input
    x = np.zeros((1, 3, spec.height, spec.width), dtype=spec.dtype)
    try:
        (y,) = session.run(None, {session.get_inputs()[0].name: x})
    except Exception as exc:  # ORT raises its own exception types; say what we tried
        raise SignatureError(
            f"the model failed to run on a (1, 3, {spec.height}, {spec.width}) {spec.dtype} input "
            f"(the card's input size): {exc}"
        ) from exc
    expected: tuple[int, ...] = (1, card.num_classes, spec.height, spec.width)
    if card.output.kind == "labels":
        expected = (1, spec.height, spec.width)
    if y.shape != expected:
        raise SignatureError(
            f"for a (1, 3, {spec.height}, {spec.width}) input the model returned {y.shape}, "
            f"but the card ({card.num_classes} classes, {card.output.kind}) needs {expected}"
        )
