"""One signature check: the service and model_export judge a graph by the same rules."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from model_export import annotate
from service import runtime
from service.errors import ModelLoadError
from service.signature import SignatureError, Tensor, check_tensors, servable
from tests.support import tiny_card, tiny_model

X = Tensor("x", "float32", ("N", 3, 8, 8))
LOGITS = Tensor("y", "float32", ("N", 3, 8, 8))


def _two_outputs(path: Path) -> Path:
    """The tiny model with its input passed through as a second output."""
    model = tiny_model(tiny_card(size=8))
    model.graph.node.append(helper.make_node("Identity", ["input"], ["copy"]))
    model.graph.output.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, None))
    onnx.save(model, path)
    return path


def test_session_and_model_proto_describe_the_same_tensors(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(tiny_model(tiny_card(size=8)), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_session = (runtime._tensors(session.get_inputs()), runtime._tensors(session.get_outputs()))
    assert from_session == annotate._tensors(onnx.load(str(path)))
    assert servable(*from_session) == ("float32", "logits")


def test_both_doors_refuse_a_graph_for_the_same_reason(tmp_path: Path) -> None:
    path = _two_outputs(tmp_path / "two.onnx")
    with pytest.raises(SignatureError, match=r"exactly one output, found 2") as by_annotate:
        annotate.graph_signature(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError) as by_service:
        runtime.check_session(session, tiny_card(size=8), path)
    assert str(by_service.value) == f"{path}: {by_annotate.value}"


def test_a_signature_error_is_a_model_load_error_and_a_value_error() -> None:
    with pytest.raises(ModelLoadError):
        servable([X, X], [LOGITS])
    with pytest.raises(ValueError, match=r"found 2: \['x', 'x'\]"):
        servable([X, X], [LOGITS])


def test_check_tensors_compares_dtype_with_the_card() -> None:
    half = Tensor("x", "float16", X.shape)
    with pytest.raises(SignatureError, match=r"^m\.onnx: input type float16 but the card says"):
        check_tensors([half], [LOGITS], tiny_card(size=8), Path("m.onnx"))
    check_tensors([X], [LOGITS], tiny_card(size=8), Path("m.onnx"))
