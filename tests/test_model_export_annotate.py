"""annotate/inspect: cards for models made elsewhere, learnt from the graph and one run, and
refused with one line saying why when the graph cannot be served."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_export.__main__ import main
from model_export.annotate import SignatureError, annotate, learn
from model_export.card import card_of_file
from service.model_card import InputSpec, ModelCard
from tests import graphs
from tests.support import ROOT, TINY_LABELS, tiny_card, tiny_model


def _foreign(tmp_path: Path, output: str = "logits") -> Path:
    """The tests' tiny model as another tool would ship it: no card."""
    model = tiny_model(tiny_card(size=16, output=output))
    del model.metadata_props[:]
    path = tmp_path / f"foreign-{output}.onnx"
    onnx.save(model, path)
    return path


def _saved(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _card(**input_fields: object) -> ModelCard:
    spec = {"height": 16, "width": 16, "mean": (0, 0, 0), "std": (1, 1, 1)} | input_fields
    return ModelCard.with_default_colors(TINY_LABELS, name="foreign", input=InputSpec(**spec))


def _graph(inputs, outputs, nodes, weights=()) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=list(weights)),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    return model


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_annotate_writes_a_card_the_service_can_read(tmp_path: Path) -> None:
    path = _foreign(tmp_path)
    with pytest.raises(ValueError, match="annotate"):
        card_of_file(path)  # the service's message points at this command
    written = annotate(path, _card())
    assert card_of_file(path) == written
    assert (written.output.kind, written.output.name, written.input.layout) == (
        "logits",
        None,
        "NCHW",
    )
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


def test_learn_finds_layout_type_output_and_stride(tmp_path: Path) -> None:
    pixels = learn(_saved(tmp_path, graphs.nhwc_pixels(), "nhwc.onnx"), (32, 48))
    assert (pixels.signature.layout, pixels.signature.dtype) == ("NHWC", "uint8")
    assert (pixels.output_shape, pixels.stride, pixels.classes) == ((1, 3, 32, 48), (1, 1), 3)
    strided = learn(_saved(tmp_path, graphs.strided(), "strided.onnx"), (64, 32))
    assert (strided.output_shape, strided.stride) == ((1, 3, 16, 8), (4, 4))
    both = learn(_saved(tmp_path, graphs.two_outputs(), "two.onnx"), (16, 16), output="aux")
    assert (both.signature.output.name, both.other_outputs) == ("aux", ("out",))
    ids = learn(_saved(tmp_path, graphs.argmax_int64(), "ids.onnx"), (16, 16))
    assert (ids.signature.kind, ids.output_shape, ids.classes) == ("labels", (1, 1, 16, 16), None)


def test_annotate_names_the_output_only_when_there_are_several(tmp_path: Path) -> None:
    path = _saved(tmp_path, graphs.two_outputs())
    written = annotate(path, _card(), output="out")
    assert (written.output.name, written.output.kind) == ("out", "logits")
    # Annotating again keeps serving the output the card names.
    assert annotate(path, written).output.name == "out"


def test_annotate_keeps_a_uint8_input_unnormalised(tmp_path: Path) -> None:
    path = _saved(tmp_path, graphs.nhwc_pixels())
    written = annotate(path, ModelCard.with_default_colors(
        TINY_LABELS, name="pixels", input=InputSpec(height=16, width=16)
    ))  # fmt: skip
    assert (written.input.dtype, written.input.layout) == ("uint8", "NHWC")
    with pytest.raises(SignatureError, match=r"uint8 pixels.*mean and std do not apply"):
        annotate(path, _card())


def _two_inputs() -> onnx.ModelProto:
    return _graph(
        [_float(n, [1, 3, 16, 16]) for n in "ab"],
        [_float("y", [1, 3, 16, 16])],
        [helper.make_node("Add", ["a", "b"], ["y"])],
    )


def _three_d() -> onnx.ModelProto:
    return _graph(
        [_float("x", [1, 16, 16])],
        [_float("y", [1, 16, 16])],
        [helper.make_node("Relu", ["x"], ["y"])],
    )


def _int_input() -> onnx.ModelProto:
    return _graph(
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3, 16, 16])],
        [helper.make_node("Neg", ["x"], ["y"])],
    )


def _one_channel() -> onnx.ModelProto:
    return _graph(
        [_float("x", [1, 1, 16, 16])],
        [_float("y", [1, 1, 16, 16])],
        [helper.make_node("Relu", ["x"], ["y"])],
    )


def _classifier() -> onnx.ModelProto:
    return _graph(
        [_float("x", [1, 3, 16, 16])],
        [_float("y", [1, 768])],
        [helper.make_node("Flatten", ["x"], ["y"])],
    )


def _pooled() -> onnx.ModelProto:
    """Scores of the whole image: (N, 3, 1, 1), which is 4-D but no mask."""
    return _graph(
        [_float("x", ["N", 3, "H", "W"])],
        [_float("y", ["N", 3, 1, 1])],
        [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
    )


def _cropped() -> onnx.ModelProto:
    """A 5x5 convolution without padding: 4 pixels short of the input, not a fraction of it."""
    weights = onnx.numpy_helper.from_array(np.ones((3, 3, 5, 5), np.float32), "w")
    return _graph(
        [_float("x", ["N", 3, "H", "W"])],
        [_float("y", ["N", 3, "h", "w"])],
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [weights],
    )


def _only_16() -> onnx.ModelProto:
    """Any size by its signature, but a reshape inside takes only 16x16."""
    shape = onnx.numpy_helper.from_array(np.array([1, 3, 16, 16], np.int64), "shape")
    return _graph(
        [_float("x", ["N", 3, "H", "W"])],
        [_float("y", ["N", 3, "H", "W"])],
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [shape],
    )


SIZE_16, SIZE_32 = ["--input-size", "16x16"], ["--input-size", "32x32"]
# graph, annotate options, what the one-line error says
REFUSALS: list[tuple[Callable[[], onnx.ModelProto], list[str], str]] = [
    (_two_inputs, [], r"exactly one input \(an image batch\), found 2: \['a', 'b'\]"),
    (_three_d, [], r"input 'x' must be a 4-D float32/float16/uint8 image tensor, .*\[1, 16, 16\]"),
    (_int_input, [], r"must be a 4-D float32/float16/uint8 image tensor.*int64"),
    (_one_channel, [], r"must have 3 \(RGB\) channels \(N, 3, H, W\) or \(N, H, W, 3\)"),
    (_one_channel, ["--layout", "NHWC"], r"3 \(RGB\) channels in axis 3 \(NHWC\)"),
    (_classifier, [], r"output 'y' must be float32/float16 scores .* float32\[1, 768\]"),
    (_pooled, ["--input-size", "64x64"], r"the output is 1x1: coarser than 1/32, a pooled output"),
    (_cropped, SIZE_16, r"is 12x12: its height is not the input's divided by a whole factor"),
    (
        _only_16,
        SIZE_32,
        r"failed to run on a \(1, 3, 32, 32\) float32 input \(32x32, NCHW\); "
        r"give the size it takes with --input-size HxW: .*Reshape",
    ),
    (
        graphs.two_outputs,
        SIZE_16,
        r"the graph has 2 outputs: \['out', 'aux'\]; name the one to serve .*--output NAME",
    ),
    (
        graphs.two_outputs,
        [*SIZE_16, "--output", "logits"],
        r"no output 'logits'; its outputs are \['out', 'aux'\]",
    ),
    (
        graphs.nhwc_pixels,
        [*SIZE_16, "--mean", "0,0,0"],
        r"takes uint8 pixels, which the graph normalises itself: mean and std do not apply",
    ),
    (graphs.strided, [], r"the graph takes any input size: give the size to serve it at"),
    (lambda: graphs.strided(16), SIZE_32, r"the graph takes only 16x16 inputs, not 32x32"),
    (
        lambda: graphs.nearest_colour(np.eye(5, 3) * 255),
        SIZE_16,
        r"the model scores 5 classes; the card lists 3 labels",
    ),
]


@pytest.mark.parametrize(("build", "options", "message"), REFUSALS)
def test_cli_annotate_refuses_with_one_line_saying_why(
    build: Callable[[], onnx.ModelProto],
    options: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _saved(tmp_path, build())
    args = ["annotate", str(path), "--name", "x", "--labels", ",".join(TINY_LABELS), *options]
    assert main(args) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    assert re.search(message, line), line
    assert not onnx.load(str(path)).metadata_props, "nothing is written"


def test_a_model_failing_on_the_probe_is_one_line_on_the_real_stderr(tmp_path: Path) -> None:
    # In a process of its own: ONNX Runtime's logger writes to file descriptor 2, unseen by capsys.
    path = _saved(tmp_path, _only_16())
    run = subprocess.run(
        [sys.executable, "-m", "model_export", "annotate", str(path), "--name", "x",
         "--labels", ",".join(TINY_LABELS), *SIZE_32],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: the model failed to run on a (1, 3, 32, 32)"), line


def test_cli_annotate_prints_what_it_learnt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --out names a version folder of a model not yet in the repository: it is made.
    path, out = _saved(tmp_path, graphs.strided()), tmp_path / "models/quarter/1/model.onnx"
    args = ["annotate", str(path), "--name", "quarter", "--labels", "background,red,green",
            "--input-size", "64x48", "--mean", "0,0,0", "--std", "1,1,1",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"annotated {out}",
        "  input   'input' float32 NCHW ['N', 3, 'H', 'W'], probed at 64x48",
        "  output  'logits' float32 scores of 3 classes, 16x12: stride 4 (the service scales "
        "it to the input size)",
        "  card    'quarter': 3 classes, input 64x48, mean (0.0, 0.0, 0.0), std (1.0, 1.0, 1.0), "
        "resize stretch",
    ]
    card = card_of_file(out)
    assert (card.input.height, card.input.width, card.output.kind) == (64, 48, "logits")


def test_cli_annotate_takes_the_size_a_graph_fixes(tmp_path: Path) -> None:
    path = _saved(tmp_path, graphs.two_outputs(size=24))
    args = ["annotate", str(path), "--name", "tv", "--labels", "a,b,c", "--output", "out"]
    assert main(args) == 0
    card = card_of_file(path)
    assert (card.input.height, card.input.width, card.output.name) == (24, 24, "out")


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


def test_cli_inspect_shows_pixels_and_the_output_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _saved(tmp_path, graphs.nhwc_pixels(size=16))
    assert main(["annotate", str(path), "--name", "k", "--labels", "a,b,c"]) == 0
    assert main(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "input: 16x16 RGB NHWC uint8, pixels 0..255 (normalised in the graph)" in printed
    assert "output: logits" in printed


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
