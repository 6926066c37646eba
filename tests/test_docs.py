"""The documentation stays true to the code: every setting (with its default), every metric, the
bundled model's figures, the examples' arithmetic and the exit statuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

from service import metrics
from service.model_card import ModelCard
from service.settings import Settings
from tests.support import ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "API.md"]
_ROW = re.compile(r"^\| `(SEGSERVE_[A-Z0-9_]+)`(?:, `(SEGSERVE_[A-Z0-9_]+)`)? \| ([^|]*) \|", re.M)


def documented_defaults(path: Path) -> dict[str, str]:
    """Settings-table rows: variable -> default cell (a row may name two variables)."""
    rows: dict[str, str] = {}
    for first, second, default in _ROW.findall(path.read_text()):
        values = re.findall(r"`([^`]*)`", default)
        for i, name in enumerate(n for n in (first, second) if n):
            rows[name] = values[i] if i < len(values) else default.strip()
    return rows


def as_documented(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(as_documented(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_setting_is_documented_with_its_default(path: Path) -> None:
    rows = documented_defaults(path)
    fields = {f"SEGSERVE_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(rows) == set(fields)
    for name, field in fields.items():
        if field.default is None or field.default == ():
            continue  # "none", "the first model by name": said in words
        assert rows[name] == as_documented(field.default), name


def test_every_metric_is_documented() -> None:
    api_md = (ROOT / "docs" / "API.md").read_text()
    collectors = [c for c in vars(metrics).values() if isinstance(c, MetricWrapperBase)]
    assert collectors, "no collectors found in service.metrics"
    for collector in collectors:
        for metric in collector.describe():
            # A counter is exposed with the suffix _total.
            exposed = f"{metric.name}_total" if isinstance(collector, Counter) else metric.name
            assert f"`{exposed}`" in api_md, exposed


def json_example_after(path: Path, heading: str) -> dict:
    """The first ```json block after ``heading`` in ``path``."""
    text = path.read_text()
    block = re.search(r"```json\n(.*?)\n```", text[text.index(heading) :], re.S)
    assert block is not None, heading
    return json.loads(block.group(1))


def test_readme_curl_examples_write_outside_the_checkout() -> None:
    outputs = re.findall(r"^curl .* -o (\S+)", (ROOT / "README.md").read_text(), re.M)
    assert outputs
    for output in outputs:
        assert Path(output).is_absolute(), output
        assert not Path(output).is_relative_to(ROOT), output


def test_the_models_example_shows_the_bundled_models_card() -> None:
    example = json_example_after(ROOT / "docs" / "API.md", "## GET /models")
    model = onnx.load(ROOT / "models" / "shapes-fcn" / "1" / "model.onnx", load_external_data=False)
    card = ModelCard.from_metadata({p.key: p.value for p in model.metadata_props})
    (version,) = example["versions"]
    assert example["name"] == card.name
    assert version["description"] == card.description
    assert version["classes"] == [c.model_dump(mode="json") for c in card.classes]
    spec = card.input.model_dump(mode="json")
    assert version["input"] == {key: spec[key] for key in version["input"]}
    assert version["output"] == card.output.kind
    assert version["normalization"]["mean"] == list(card.input.mean)
    assert version["normalization"]["std"] == list(card.input.std)
    assert card.training is not None
    training = card.training.model_dump(mode="json")
    assert {key: training[key] for key in version["training"]} == version["training"]


def test_the_rle_example_areas_add_up_to_the_image() -> None:
    example = json_example_after(ROOT / "docs" / "API.md", "### format=rle")
    assert sum(m["area"] for m in example["masks"]) == example["width"] * example["height"]
    for entry in example["masks"]:
        assert entry["rle"]["size"] == [example["height"], example["width"]]


def test_readme_lists_every_exit_status_of_the_server() -> None:
    readme = (ROOT / "README.md").read_text()
    exits = readme[readme.index("`python -m service` exits") :].split("\n\n")[0]
    for status in ("0 after", "1 when", "2 for", "3 when"):
        assert status in exits
    assert "SEGSERVE_PORT" in exits
