"""One card reader: the service and model_export read a model's card the same way."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from model_export.card import card_of_file
from service.errors import ModelLoadError
from service.model_card import METADATA_KEY, InvalidCard, ModelCard
from tests.support import tiny_card, tiny_model


def test_both_doors_read_the_same_card_and_refuse_a_missing_one_alike(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    model = tiny_model(tiny_card())
    onnx.save(model, path)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert card_of_file(path) == ModelCard.from_metadata(metadata, path)
    del model.metadata_props[:]
    onnx.save(model, path)
    with pytest.raises(InvalidCard) as from_file:
        card_of_file(path)
    with pytest.raises(InvalidCard) as served:
        ModelCard.from_metadata({}, path)
    assert str(from_file.value) == str(served.value)
    assert str(served.value).startswith(f"{path}: invalid model card: no '{METADATA_KEY}'")


def test_an_invalid_card_is_a_model_load_error_and_a_value_error() -> None:
    with pytest.raises(ModelLoadError, match=r"^invalid model card: (.|\n)*\nclasses\n"):
        ModelCard.from_metadata({METADATA_KEY: '{"name": "x", "classes": []}'})
    with pytest.raises(ValueError, match=r"^m\.onnx: invalid model card"):
        ModelCard.from_metadata({METADATA_KEY: "{not json"}, Path("m.onnx"))
