"""ONNX graphs as other tools export them, built with ``onnx.helper``, without a model card.

Each computes the tiny model's colour classifier (``tests.support``: background 0.5, red
2R - G - B, green 2G - R - B on x = p / 255) in another shape, so its answer is known:

- ``nhwc_pixels``: uint8 (N, H, W, 3) pixels in, normalised inside the graph (a TF/Keras export);
- ``two_outputs``: the scores as ``out`` beside an ``aux`` head (torchvision's segmentation models);
- ``argmax_int64``: int64 labels (N, 1, H, W), ArgMax with keepdims;
- ``strided``: the scores of 4x4 average-pooled pixels, (N, 3, H/4, W/4), like SegFormer's 1/4;
- ``half``: float16 in and out.

``nearest_colour`` scores many classes: class k is the nearest of ``colours``.
A graph takes any height and width unless ``size`` fixes them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support import TINY_BIAS, TINY_WEIGHTS

POOL = 4  # the strided graph's output stride


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    weights: dict[str, np.ndarray],
) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _value(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _conv(x: str, y: str, prefix: str = "") -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    """The colour classifier as a 1x1 convolution of ``x`` into ``y``."""
    node = helper.make_node("Conv", [x, f"{prefix}W", f"{prefix}B"], [y])
    return node, {f"{prefix}W": TINY_WEIGHTS, f"{prefix}B": TINY_BIAS}


def _hw(size: int | None) -> tuple[int | str, int | str]:
    return (size, size) if size else ("H", "W")


def nhwc_pixels(size: int | None = None) -> onnx.ModelProto:
    h, w = _hw(size)
    conv, weights = _conv("x", "logits")
    nodes = [
        helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["as_float", "full_scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["x"], perm=[0, 3, 1, 2]),
        conv,
    ]
    return _model(
        nodes,
        [_value("pixels", TensorProto.UINT8, ["N", h, w, 3])],
        [_value("logits", TensorProto.FLOAT, ["N", 3, h, w])],
        weights | {"full_scale": np.array(255.0, np.float32)},
    )


def two_outputs(size: int | None = None) -> onnx.ModelProto:
    h, w = _hw(size)
    conv, weights = _conv("input", "out")
    nodes = [conv, helper.make_node("Neg", ["out"], ["aux"])]
    return _model(
        nodes,
        [_value("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [_value(name, TensorProto.FLOAT, ["N", 3, h, w]) for name in ("out", "aux")],
        weights,
    )


def argmax_int64(size: int | None = None) -> onnx.ModelProto:
    h, w = _hw(size)
    conv, weights = _conv("input", "logits")
    nodes = [conv, helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=1)]
    return _model(
        nodes,
        [_value("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [_value("labels", TensorProto.INT64, ["N", 1, h, w])],
        weights,
    )


def strided(size: int | None = None) -> onnx.ModelProto:
    h, w = _hw(size)
    conv, weights = _conv("pooled", "logits")
    pool = helper.make_node(
        "AveragePool", ["input"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]
    )
    return _model(
        [pool, conv],
        [_value("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [_value("logits", TensorProto.FLOAT, ["N", 3, "h", "w"])],
        weights,
    )


def strided_scores(x: np.ndarray) -> np.ndarray:
    """What ``strided`` computes for a batch (N, 3, H, W), in NumPy: (N, 3, H/4, W/4)."""
    n, c, h, w = x.shape
    pooled = x.reshape(n, c, h // POOL, POOL, w // POOL, POOL).mean(axis=(3, 5))
    scores = np.einsum("nchw,kc->nkhw", pooled, TINY_WEIGHTS[:, :, 0, 0])
    return (scores + TINY_BIAS[None, :, None, None]).astype(np.float32)


def half(size: int | None = None) -> onnx.ModelProto:
    h, w = _hw(size)
    conv, weights = _conv("input", "logits")
    return _model(
        [conv],
        [_value("input", TensorProto.FLOAT16, ["N", 3, h, w])],
        [_value("logits", TensorProto.FLOAT16, ["N", 3, h, w])],
        {name: value.astype(np.float16) for name, value in weights.items()},
    )


def nearest_colour(colours: np.ndarray, size: int | None = None) -> onnx.ModelProto:
    """Scores (N, K, H, W) for K = len(``colours``) (K, 3) in 0..255: class k scores
    2 x.c_k - |c_k|^2 = |x|^2 - |x - c_k|^2 with x = p / 255, so the highest is the nearest."""
    h, w = _hw(size)
    c = colours.astype(np.float32) / 255
    weights = {"W": (2 * c).reshape(len(c), 3, 1, 1), "B": -(c * c).sum(axis=1)}
    return _model(
        [helper.make_node("Conv", ["input", "W", "B"], ["logits"])],
        [_value("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [_value("logits", TensorProto.FLOAT, ["N", len(c), h, w])],
        weights,
    )
