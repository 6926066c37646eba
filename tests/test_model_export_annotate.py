"""annotate/inspect: cards for models made elsewhere, refused when the graph cannot be served."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from model_export.__main__ import main
from model_export.annotate import SignatureError, annotate
from model_export.card import card_of_file
from service.model_card import InputSpec, ModelCard
from tests.support import TINY_LABELS, tiny_card, tiny_model


def _foreign(tmp_path: Path, output: str = "logits") -> Path:
    """The tests' tiny model as another tool would ship it: no card."""
    model = tiny_model(tiny_card(size=16, output=output))
    del model.metadata_props[:]
    path = tmp_path / f"foreign-{output}.onnx"
    onnx.save(model, path)
    return path


def _card(**input_fields: object) -> ModelCard:
    spec = {"height": 16, "width": 16, "mean": (0, 0, 0), "std": (1, 1, 1)} | input_fields
    return ModelCard.with_default_colors(TINY_LABELS, name="foreign", input=InputSpec(**spec))


def _graph(inputs, outputs, nodes) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def test_annotate_writes_a_card_the_service_can_read(tmp_path: Path) -> None:
    path = _foreign(tmp_path)
    with pytest.raises(ValueError, match="annotate"):
        card_of_file(path)  # the service's message points at this command
    written = annotate(path, _card())
    assert card_of_file(path) == written
    assert written.output.kind == "logits"
    assert [c.label for c in written.classes] == TINY_LABELS


def test_annotate_detects_label_outputs_and_writes_elsewhere(tmp_path: Path) -> None:
    path, out = _foreign(tmp_path, output="labels"), tmp_path / "annotated.onnx"
    annotate(path, _card(), out)
    assert card_of_file(out).output.kind == "labels"
    assert not onnx.load(str(path)).metadata_props, "the original stays untouched"


def test_annotate_replaces_an_existing_card(tmp_path: Path) -> None:
    path = _foreign(tmp_path)
    annotate(path, _card())
    renamed = annotate(path, _card().model_copy(update={"name": "renamed"}))
    assert card_of_file(path).name == renamed.name == "renamed"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            _graph(
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 16, 16]) for n in "ab"],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])],
                [helper.make_node("Add", ["a", "b"], ["y"])],
            ),
            r"exactly one input .*found 2: \['a', 'b'\]",
        ),
        (
            _graph(
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16])],
                [helper.make_node("Relu", ["x"], ["y"])],
            ),
            r"input 'x' must be a 4-D float32/float16 tensor .*float32\[1, 16, 16\]",
        ),
        (
            _graph(
                [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 16, 16])],
                [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3, 16, 16])],
                [helper.make_node("Neg", ["x"], ["y"])],
            ),
            r"4-D float32/float16 tensor",
        ),
        (
            _graph(
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])],
                [helper.make_node("Relu", ["x"], ["y"])],
            ),
            r"3 \(RGB\) channels",
        ),
        (
            _graph(
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 768])],
                [helper.make_node("Flatten", ["x"], ["y"])],
            ),
            r"output 'y' must be float logits \(N, C, H, W\) or uint8 labels .*float32\[1, 768\]",
        ),
    ],
    ids=["two-inputs", "3d-input", "int-input", "one-channel", "classifier-output"],
)
def test_annotate_refuses_graphs_the_service_cannot_serve(
    model: onnx.ModelProto, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(SignatureError, match=message):
        annotate(path, _card())
    assert not onnx.load(str(path)).metadata_props


def test_annotate_refuses_a_card_with_the_wrong_number_of_classes(tmp_path: Path) -> None:
    path = _foreign(tmp_path)
    card = ModelCard.with_default_colors(
        ["bg", "a"], name="x", input=InputSpec(height=16, width=16)
    )
    with pytest.raises(SignatureError, match=r"returned \(1, 3, 16, 16\).*2 classes.*needs"):
        annotate(path, card)


def test_annotate_reports_a_model_that_cannot_run_at_the_card_size(tmp_path: Path) -> None:
    path = _foreign(tmp_path)  # fixed 16x16 input
    with pytest.raises(SignatureError, match=r"failed to run on a \(1, 3, 32, 32\)"):
        annotate(path, _card(height=32, width=32))


def test_cli_annotate_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _foreign(tmp_path)
    args = ["annotate", str(path), "--name", "colours", "--labels", "background,red,green",
            "--input-size", "16x16", "--mean", "0,0,0", "--std", "1,1,1"]  # fmt: skip
    assert main(args) == 0
    assert main(["inspect", str(path), "--latency", "3", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "input input: float32[N, 3, 16, 16]" in printed
    assert "ms per batch of 1 (3 runs, 1 intra-op threads" in printed
    assert "name: colours" in printed
    assert "classes: 0 background (0, 0, 0), 1 red (128, 0, 0), 2 green (0, 128, 0)" in printed
    card = card_of_file(path)
    assert card.input.mean == (0, 0, 0)
    assert card.classes[1].label == "red"
    # A wrong signature is a clear message and exit status 2, not a traceback.
    bad = tmp_path / "bad.onnx"
    onnx.save(
        _graph(
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16])],
            [helper.make_node("Relu", ["x"], ["y"])],
        ),
        bad,
    )
    assert main(["annotate", str(bad), "--name", "x", "--labels", "a,b",
                 "--input-size", "16x16"]) == 2  # fmt: skip
    assert "error: input 'x' must be a 4-D" in capsys.readouterr().err


def test_cli_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    for command in ("train", "evaluate", "export", "annotate", "inspect"):
        assert command in printed
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--labels" in capsys.readouterr().out
