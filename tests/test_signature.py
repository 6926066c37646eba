"""One signature check: the service and model_export judge a graph by the same rules."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from model_export import annotate
from service import runtime
from service.errors import ModelLoadError
from service.model_card import InputSpec, OutputSpec
from service.signature import (
    SignatureError,
    Tensor,
    check_tensors,
    output_stride,
    servable,
)
from tests import graphs
from tests.support import tiny_card, tiny_model

X = Tensor("x", "float32", ("N", 3, 8, 8))
LOGITS = Tensor("y", "float32", ("N", 3, 8, 8))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_session_and_model_proto_describe_the_same_tensors() -> None:
    for model in (tiny_model(tiny_card(size=8)), graphs.nhwc_pixels(), graphs.argmax_int64()):
        session = _session(model)
        from_session = (
            runtime._tensors(session.get_inputs()),
            runtime._tensors(session.get_outputs()),
        )
        assert from_session == annotate._tensors(model)


def test_both_doors_refuse_a_graph_for_the_same_reason(tmp_path: Path) -> None:
    path = tmp_path / "two.onnx"
    onnx.save(graphs.two_outputs(size=8), path)
    with pytest.raises(SignatureError, match=r"2 outputs: \['out', 'aux'\]; name") as by_annotate:
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


def test_the_axis_of_size_three_says_the_layout() -> None:
    nhwc = Tensor("x", "uint8", ("N", "H", "W", 3))
    found = servable([nhwc], [LOGITS])
    assert (found.layout, found.dtype, found.size) == ("NHWC", "uint8", ("H", "W"))
    assert servable([X], [LOGITS]).layout == "NCHW"
    # Both axes, or neither, of size 3: PyTorch's layout, unless told.
    square = Tensor("x", "float32", ("N", 3, 8, 3))
    assert servable([square], [LOGITS]).layout == "NCHW"
    assert servable([square], [LOGITS], layout="NHWC").size == (3, 8)
    rgba = Tensor("x", "float32", ("N", 8, 8, 4))
    with pytest.raises(SignatureError, match=r"channels \(N, 3, H, W\) or \(N, H, W, 3\)"):
        servable([rgba], [LOGITS])
    with pytest.raises(SignatureError, match=r"in axis 3 \(NHWC\); found input x: float32\[N, 3"):
        servable([X], [LOGITS], layout="NHWC")


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64"])
@pytest.mark.parametrize("shape", [("N", 8, 8), ("N", 1, 8, 8)])
def test_integer_outputs_of_rank_three_or_one_channel_are_labels(
    dtype: str, shape: tuple[int | str, ...]
) -> None:
    found = servable([X], [Tensor("labels", dtype, shape)])
    assert (found.kind, found.classes) == ("labels", None)


@pytest.mark.parametrize(
    "output",
    [
        Tensor("p", "float32", ("N", 1000)),  # a classifier
        Tensor("p", "float64", ("N", 3, 8, 8)),
        Tensor("p", "int64", ("N", 3, 8, 8)),  # several channels of ids
        Tensor("p", "float32", ("N", 8, 8)),  # ids as floats
        Tensor("p", "bool", ("N", 8, 8)),
    ],
)
def test_other_outputs_are_refused(output: Tensor) -> None:
    with pytest.raises(SignatureError, match=r"output 'p' must be float32/float16 scores"):
        servable([X], [output])


def test_the_output_to_serve_is_chosen_by_name() -> None:
    aux = Tensor("aux", "float32", ("N", 3, 8, 8))
    assert servable([X], [LOGITS, aux], output="aux").output == aux
    with pytest.raises(SignatureError, match=r"no output 'out'; its outputs are \['y', 'aux'\]"):
        servable([X], [LOGITS, aux], output="out")


def test_check_tensors_compares_the_graph_with_the_card() -> None:
    card, where = tiny_card(size=8), Path("m.onnx")
    half = Tensor("x", "float16", X.shape)
    with pytest.raises(SignatureError, match=r"^m\.onnx: input type float16 but the card says"):
        check_tensors([half], [LOGITS], card, where)
    nhwc = Tensor("x", "float32", ("N", 8, 8, 3))
    with pytest.raises(SignatureError, match=r"channels in axis 1 \(NCHW\); found input x"):
        check_tensors([nhwc], [LOGITS], card, where)
    as_nhwc = card.model_copy(update={"input": InputSpec(height=8, width=8, layout="NHWC")})
    assert check_tensors([nhwc], [LOGITS], as_nhwc, where).layout == "NHWC"
    aux = Tensor("aux", "float32", ("N", 3, 2, 2))
    with pytest.raises(SignatureError, match=r"2 outputs"):
        check_tensors([X], [LOGITS, aux], card, where)
    naming = card.model_copy(update={"output": OutputSpec(name="aux")})
    assert check_tensors([X], [LOGITS, aux], naming, where).output == aux
    check_tensors([X], [LOGITS], card, where)


@pytest.mark.parametrize(
    ("size", "output", "stride"),
    [
        ((512, 512), (128, 128), (4, 4)),
        ((513, 511), (129, 128), (4, 4)),  # odd sizes: ceil or floor of the division
        ((64, 64), (64, 64), (1, 1)),
        ((96, 64), (12, 16), (8, 4)),
    ],
)
def test_output_stride_is_a_whole_factor(
    size: tuple[int, int], output: tuple[int, int], stride: tuple[int, int]
) -> None:
    assert output_stride(size, output) == stride


@pytest.mark.parametrize("output", [(96, 96), (60, 64), (64, 128), (0, 64)])
def test_an_output_that_is_not_a_whole_fraction_of_the_input_is_refused(
    output: tuple[int, int],
) -> None:
    with pytest.raises(SignatureError, match=r"not the input's divided by a whole factor"):
        output_stride((64, 64), output)
