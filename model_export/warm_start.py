"""Start training from the weights of an earlier model: an exported ONNX model of the same
architecture (``load_exported``), or a training checkpoint of the same or a sibling architecture
(``load_checkpoint``).

The exporter folds each batch norm into the convolution before it (W' = W * gamma / sigma, plus a
bias), so the ONNX initialisers carry every convolution's weight under its PyTorch name but no
batch-norm statistics. ``load_exported`` copies the weights, then refits each batch norm on a
calibration batch so that the network computes exactly the exported function in eval mode
(checked against ONNX Runtime) and nearly the same in train mode, where batch statistics
replace the running ones: running mean/var = the per-channel mean/var of W'x on the batch,
gamma = sqrt(var + eps), beta = folded bias + mean.

A checkpoint holds the unfolded weights and statistics, so they load as they are; it may hold
more than the model takes (a learned upsampler the model replaces by a fixed one).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from model_export.checkpoint import Checkpoint

MAX_ABS_DIFF = 1e-3  # eval-mode logits against ONNX Runtime, after the refit


def load_exported(model: nn.Module, path: Path, calibration: torch.Tensor) -> float:
    """Load ``path``'s weights into ``model`` (built with the same architecture and width);
    returns the max |logit| difference to ONNX Runtime on ``calibration``. Raises ValueError
    when a weight is missing or has another shape, or when the difference exceeds
    ``MAX_ABS_DIFF``."""
    proto = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    folded_bias = {
        node.input[1]: weights[node.input[2]]
        for node in proto.graph.node
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in weights
    }
    pairs = _conv_bn_pairs(model)
    _copy_weights(model, weights, {bn for _, bn in pairs})
    with torch.no_grad():
        for conv, bn in pairs:
            _as_bias(bn, folded_bias[_name(model, conv) + ".weight"])
        _refit(model, pairs, calibration)
    return _check(model, proto, calibration)


def load_checkpoint(model: nn.Module, path: Path) -> list[str]:
    """Load the weights and batch-norm statistics of the training checkpoint ``path`` into
    ``model``; returns the names of the checkpoint's tensors the model has no place for.
    Raises ValueError when one of the model's tensors is missing or has another shape."""
    saved = Checkpoint.load(path).state_dict
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name not in saved or saved[name].shape != tensor.shape:
                raise ValueError(f"{name}: missing or of another shape in {path}")
            tensor.copy_(saved[name])
    return sorted(set(saved) - set(model.state_dict()))


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    pairs = []
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            children = list(seq)
            for a, b in itertools.pairwise(children):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((a, b))
    return pairs


def _copy_weights(
    model: nn.Module, weights: dict[str, np.ndarray], norms: set[nn.BatchNorm2d]
) -> None:
    skip = {_name(model, bn) for bn in norms}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.rsplit(".", 1)[0] in skip:
                continue
            if name not in weights or tuple(weights[name].shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: missing or of another shape in the exported model")
            tensor.copy_(torch.from_numpy(weights[name].copy()))


def _as_bias(bn: nn.BatchNorm2d, bias: np.ndarray) -> None:
    """Make ``bn`` add ``bias`` and nothing else (in eval mode)."""
    assert bn.running_mean is not None
    assert bn.running_var is not None
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.fill_(1)
    bn.bias.copy_(torch.from_numpy(bias.copy()))


def _refit(
    model: nn.Module, pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]], batch: torch.Tensor
) -> None:
    stats: dict[nn.Conv2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(conv: nn.Module, _: object, out: torch.Tensor) -> None:
        stats[conv] = (out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=False))  # type: ignore[index]

    hooks = [conv.register_forward_hook(record) for conv, _ in pairs]
    model.eval()
    model(batch)
    for hook in hooks:
        hook.remove()
    for conv, bn in pairs:
        mean, var = stats[conv]
        assert bn.running_mean is not None
        assert bn.running_var is not None
        bn.bias.add_(mean)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))


def _check(model: nn.Module, proto: onnx.ModelProto, batch: torch.Tensor) -> float:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = batch[:2]
    (expected,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    model.eval()
    with torch.no_grad():
        got = model(x).numpy()
    diff = float(np.abs(got - expected).max())
    if diff > MAX_ABS_DIFF:
        raise ValueError(f"warm start: max |logit - ONNX| {diff:.3g} > {MAX_ABS_DIFF}")
    return diff
