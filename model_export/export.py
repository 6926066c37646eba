"""Export a checkpoint to a self-describing ONNX file.

``torch.onnx.export(..., dynamo=True)`` (the TorchScript exporter cannot express max-unpooling)
with a dynamic batch dimension, and dynamic height/width unless asked otherwise. Before anything
is written the file must reproduce PyTorch on fresh random inputs (see ``PARITY``); optional
fp16 weights, and optional argmax folded into the graph (uint8 labels out, card
``output.kind="labels"``). The model card goes into ``metadata_props``. ``Graph`` describes
networks made elsewhere (``model_export.importers``): their input's name, the multiple their
height and width must be, and logits smaller than the input.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.export import Dim

from service.model_card import ModelCard

log = logging.getLogger(__name__)

INPUT_NAME = "input"
LOGITS_NAME = "logits"
LABELS_NAME = "labels"
OPSET = 18


@dataclass(frozen=True)
class Tolerance:
    max_abs_logit: float
    min_argmax_agreement: float


# fp16 rounds every activation to 11 significant bits: logits drift by ~1e-2, and only pixels
# near a tie between two classes may flip.
PARITY = {
    "fp32": Tolerance(max_abs_logit=1e-4, min_argmax_agreement=0.999),
    "fp16": Tolerance(max_abs_logit=5e-2, min_argmax_agreement=0.995),
}


@dataclass(frozen=True)
class Graph:
    """The exported graph's interface beyond the card: the input's name; height and width as
    multiples of ``size_multiple`` (networks that refuse other sizes); ``full_size`` logits, at
    the input's height and width, or smaller ones (SegFormer's are 1/4 of the input)."""

    input_name: str = INPUT_NAME
    size_multiple: int = 1
    full_size: bool = True


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Parity:
    max_abs_logit: float
    argmax_agreement: float


def export(
    model: nn.Module,
    card: ModelCard,
    path: Path,
    *,
    fp16: bool = False,
    labels: bool = False,
    dynamic_size: bool = True,
    tolerance: Tolerance | None = None,
    parity_seed: int | None = None,
    graph: Graph = Graph(),
) -> Parity:
    """Export ``model`` with ``card`` to ``path``; raises ``ParityError`` (writing nothing) when
    ONNX Runtime disagrees with PyTorch beyond ``tolerance`` (default ``PARITY`` for the
    precision). ``card.input`` and ``card.output`` are set from the options here, so the card
    always describes the file. ValueError for argmax folding on logits smaller than the input
    (the labels would be too)."""
    if labels and not graph.full_size:
        raise ValueError("--labels needs logits at the input's size; these are smaller")
    model = model.eval().cpu()
    h, w = card.input.height, card.input.width
    # fp16: weights and activations in half precision, input and logits too.
    proto = _to_onnx(copy.deepcopy(model).half() if fp16 else model, h, w, dynamic_size, graph)
    sizes = [(1, h, w), (3, h, w)]
    if dynamic_size:
        # Not a multiple of 32 where the network allows: the pad/crop path.
        step = graph.size_multiple
        sizes.append((2, _round_up(h + 8, step), _round_up(w + 40, step)))
    tolerance = tolerance or PARITY["fp16" if fp16 else "fp32"]
    parity = check_parity(model, proto, sizes, tolerance=tolerance, seed=parity_seed)
    if labels:
        proto = fold_argmax(proto)
    card = card.model_copy(
        update={
            "input": card.input.model_copy(update={"dtype": "float16" if fp16 else "float32"}),
            "output": card.output.model_copy(update={"kind": "labels" if labels else "logits"}),
            "training": card.training.model_copy(update={"precision": "fp16" if fp16 else "fp32"})
            if card.training
            else None,
        }
    )
    helper.set_model_props(proto, card.to_metadata())
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return parity


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _to_onnx(
    model: nn.Module, height: int, width: int, dynamic_size: bool, graph: Graph
) -> onnx.ModelProto:
    dtype = next(model.parameters()).dtype
    example = torch.zeros(2, 3, height, width, dtype=dtype)
    dims: dict[int, Any] = {0: Dim("batch")}
    if dynamic_size and graph.size_multiple > 1:
        step = graph.size_multiple
        dims |= {2: step * Dim(f"height_{step}"), 3: step * Dim(f"width_{step}")}
    elif dynamic_size:
        dims |= {2: Dim("height"), 3: Dim("width")}
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[graph.input_name],
        output_names=[LOGITS_NAME],
        dynamic_shapes=(dims,),
        opset_version=OPSET,
        verbose=False,
    )
    assert program is not None
    proto = program.model_proto
    # The exporter spells the cropped output size as a formula of the input's; a full-size model
    # returns the input's batch, height and width (check_parity verifies it), so say so plainly.
    (x,), (y,) = proto.graph.input, proto.graph.output
    for axis in (0, 2, 3) if graph.full_size else (0,):
        y.type.tensor_type.shape.dim[axis].CopyFrom(x.type.tensor_type.shape.dim[axis])
    return proto


def check_parity(
    model: nn.Module,
    proto: onnx.ModelProto,
    shapes: list[tuple[int, int, int]],
    *,
    tolerance: Tolerance,
    seed: int | None = None,
) -> Parity:
    """Compare ONNX Runtime with PyTorch (fp32) on fresh random batches of each (N, H, W) in
    ``shapes``; several shapes also prove the dynamic dimensions really are dynamic."""
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # a failed run is said once, by the ParityError below
    session = ort.InferenceSession(
        proto.SerializeToString(), quiet, providers=["CPUExecutionProvider"]
    )
    input_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    rng = np.random.default_rng(seed)
    worst, agree, total = 0.0, 0, 0
    for batch, height, width in shapes:
        x = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        try:
            (got,) = session.run(None, {session.get_inputs()[0].name: x.astype(input_type)})
        except Exception as exc:  # ORT's own types: the graph fixed a size it should not have
            raise ParityError(
                f"ONNX Runtime cannot run the exported graph on a {batch}x3x{height}x{width} "
                f"input ({' '.join(str(exc).split())}); a larger size may keep it dynamic"
            ) from exc
        if got.shape != expected.shape:
            raise ParityError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
        got = got.astype(np.float32)
        worst = max(worst, float(np.abs(got - expected).max()))
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        total += expected[:, 0].size  # the logits' pixels: 1/16 of the input's for SegFormer
    parity = Parity(max_abs_logit=worst, argmax_agreement=agree / total)
    log.info("parity: max |Δlogit| %.2e, argmax agreement %.5f", worst, parity.argmax_agreement)
    if worst > tolerance.max_abs_logit or parity.argmax_agreement < tolerance.min_argmax_agreement:
        raise ParityError(
            f"exported model disagrees with PyTorch: max |Δlogit| {worst:.3g} "
            f"(limit {tolerance.max_abs_logit:g}), argmax agreement "
            f"{parity.argmax_agreement:.5f} (minimum {tolerance.min_argmax_agreement})"
        )
    return parity


def fold_argmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Append ArgMax over the class axis and a cast to uint8: the graph then returns (N, H, W)
    labels, 1/C of the logits' bytes (1/4C in fp32) to copy out of the session."""
    graph = proto.graph
    (logits,) = graph.output
    dims = [d for d in logits.type.tensor_type.shape.dim]
    graph.node.extend(
        [
            helper.make_node("ArgMax", [logits.name], ["argmax"], axis=1, keepdims=0),
            helper.make_node("Cast", ["argmax"], [LABELS_NAME], to=TensorProto.UINT8),
        ]
    )
    shape = [d.dim_param or d.dim_value for i, d in enumerate(dims) if i != 1]
    graph.ClearField("output")
    graph.output.append(helper.make_tensor_value_info(LABELS_NAME, TensorProto.UINT8, shape))
    return proto
