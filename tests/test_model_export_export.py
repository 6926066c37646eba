"""ONNX export: parity with PyTorch (or no file), dynamic batch and size, card round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from model_export.annotate import graph_signature
from model_export.architectures import ARCHITECTURES, build_model
from model_export.card import card_of_file
from model_export.evaluate import onnx_predictor, onnx_session, torch_predictor
from model_export.export import PARITY, Graph, ParityError, Tolerance, export
from service.model_card import InputSpec, ModelCard, TrainingCard

LABELS = ["background", "a", "b"]


def _card(architecture: str, size: int = 64) -> ModelCard:
    return ModelCard.with_default_colors(
        LABELS,
        name="test-model",
        input=InputSpec(height=size, width=size),
        training=TrainingCard(architecture=architecture, dataset="shapes", epochs=1),
    )


def _model(name: str) -> nn.Module:
    """A small model with realistic batch-norm statistics (fresh ones make many layers dead,
    and a near-constant output would make any parity check pass)."""
    torch.manual_seed(0)
    model = build_model(name, len(LABELS), width=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    return model.eval()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _tolerance(name: str) -> Tolerance:
    if name == "deconvnet":
        # 26 layers at width 4: rounding differences between PyTorch's and ONNX Runtime's
        # kernels (and ORT's conv/batch-norm fusion) accumulate to ~3e-4 on logits of ~4;
        # every pixel's argmax still agrees.
        return Tolerance(max_abs_logit=5e-4, min_argmax_agreement=0.999)
    return PARITY["fp32"]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_export_matches_pytorch_and_carries_the_card(name: str, tmp_path: Path) -> None:
    model, card, path = _model(name), _card(name), tmp_path / "model.onnx"
    tolerance = _tolerance(name)
    s = ARCHITECTURES[name].output_stride
    graph = Graph(full_size=s == 1)
    parity = export(model, card, path, tolerance=tolerance, parity_seed=0, graph=graph)
    assert parity.max_abs_logit <= tolerance.max_abs_logit
    assert parity.argmax_agreement >= 0.999
    assert card_of_file(path) == card
    found = graph_signature(onnx.load(str(path)))
    assert (found.dtype, found.layout, found.kind) == ("float32", "NCHW", "logits")
    # Dynamic batch and size: a batch of 2 at a size that is not a stride multiple.
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 72), dtype=np.float32)
    got = _run(path, x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, 40 // s, 72 // s)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance.max_abs_logit)
    assert expected.std() > 1e-3, "a constant model would make this test vacuous"
    # Served as the service runs it (scaled to the input's size when smaller): PyTorch's labels.
    served = onnx_predictor(onnx_session(path))(x)
    reference = torch_predictor(model)(x)
    assert served.shape == reference.shape == (2, 40, 72)
    assert (served == reference).mean() >= 0.999


def test_argmax_folding_outputs_uint8_labels(tmp_path: Path) -> None:
    model, path = _model("mobile-fcn"), tmp_path / "labels.onnx"
    export(model, _card("mobile-fcn"), path, labels=True, parity_seed=0)
    card = card_of_file(path)
    assert card.output.kind == "labels"
    found = graph_signature(onnx.load(str(path)))
    assert (found.dtype, found.output.dtype, found.kind) == ("float32", "uint8", "labels")
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64), dtype=np.float32)
    labels = _run(path, x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).argmax(1).numpy()
    assert labels.dtype == np.uint8
    assert labels.shape == (3, 64, 64)
    assert (labels == expected).mean() >= 0.999


def test_fp16_export_takes_half_inputs(tmp_path: Path) -> None:
    model, path = _model("fcn8s-resnet"), tmp_path / "half.onnx"
    parity = export(
        model, _card("fcn8s-resnet"), path, fp16=True, dynamic_size=False, parity_seed=0
    )
    card = card_of_file(path)
    assert card.input.dtype == "float16"
    assert card.training.precision == "fp16"
    assert parity.max_abs_logit > 0, "half precision cannot be bit-exact"
    model_proto = onnx.load(str(path))
    (x,) = model_proto.graph.input
    assert x.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_value for d in x.type.tensor_type.shape.dim][1:] == [3, 64, 64]


class _DriftsWhenExported(nn.Module):
    """Computes something else inside the exporter: what parity checks exist to catch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, len(LABELS), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting():
            y = y + 1e-3
        return y


def test_export_fails_without_parity_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "drift.onnx"
    with pytest.raises(ParityError, match=r"max \|Δlogit\| 0\.001 \(limit 0\.0001\)"):
        export(_DriftsWhenExported().eval(), _card("conv"), path)
    assert not path.exists()
