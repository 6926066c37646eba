"""Give an ONNX model made elsewhere a model card, after checking it can be served.

A servable graph has one 4-D float input (N, 3, H, W) and one output: float logits (N, C, H, W)
or uint8 labels (N, H, W). The model is run once in ONNX Runtime at the card's input size, and
its output must have the card's number of classes, before the card is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from model_export.card import write_card
from service.model_card import ModelCard

OutputKind = Literal["logits", "labels"]

_FLOATS = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


class SignatureError(ValueError):
    """The graph's inputs/outputs are not what the service can feed and read."""


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value or "?" for d in value.type.tensor_type.shape.dim]


def signature(model: onnx.ModelProto) -> str:
    """Human-readable I/O signature, e.g. ``input: float32[N, 3, 192, 192]``."""
    lines = []
    for kind, values in (("input", _graph_inputs(model)), ("output", model.graph.output)):
        for v in values:
            elem = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            lines.append(f"{kind} {v.name}: {elem}[{', '.join(map(str, _dims(v)))}]")
    return "\n".join(lines)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # Older exporters list initializers as graph inputs too; those are weights, not inputs.
    weights = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def check_signature(model: onnx.ModelProto) -> tuple[str, OutputKind]:
    """(input dtype, output kind) of a servable graph; ``SignatureError`` explains what is not."""
    inputs, outputs = _graph_inputs(model), list(model.graph.output)
    if len(inputs) != 1:
        raise SignatureError(
            f"expected exactly one input (an image batch), found {len(inputs)}: "
            f"{[v.name for v in inputs]}"
        )
    (x,) = inputs
    x_type, x_dims = x.type.tensor_type.elem_type, _dims(x)
    if x_type not in _FLOATS or len(x_dims) != 4:
        raise SignatureError(
            f"input '{x.name}' must be a 4-D float32/float16 tensor (N, 3, H, W); "
            f"found {signature(model).splitlines()[0]}"
        )
    if isinstance(x_dims[1], int) and x_dims[1] != 3:
        raise SignatureError(
            f"input '{x.name}' must have 3 (RGB) channels in axis 1, NCHW; found {x_dims[1]}"
        )
    if len(outputs) != 1:
        raise SignatureError(
            f"expected exactly one output, found {len(outputs)}: {[v.name for v in outputs]}"
        )
    (y,) = outputs
    y_type, y_rank = y.type.tensor_type.elem_type, len(_dims(y))
    if y_type in _FLOATS and y_rank == 4:
        return _FLOATS[x_type], "logits"
    if y_type == onnx.TensorProto.UINT8 and y_rank == 3:
        return _FLOATS[x_type], "labels"
    raise SignatureError(
        f"output '{y.name}' must be float logits (N, C, H, W) or uint8 labels (N, H, W); "
        f"found {signature(model).splitlines()[-1]}"
    )


def annotate(path: Path, card: ModelCard, out: Path | None = None) -> ModelCard:
    """Check ``path``, run it once, then write ``card`` (input dtype and output kind taken from
    the graph) into it, in place or to ``out``. Returns the card written."""
    model = onnx.load(str(path), load_external_data=False)
    dtype, kind = check_signature(model)
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
    expected = (1, card.num_classes, spec.height, spec.width)
    if card.output.kind == "labels":
        expected = (1, spec.height, spec.width)
    if y.shape != expected:
        raise SignatureError(
            f"for a (1, 3, {spec.height}, {spec.width}) input the model returned {y.shape}, "
            f"but the card ({card.num_classes} classes, {card.output.kind}) needs {expected}"
        )
