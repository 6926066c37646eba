"""The documentation stays true to the code: every setting (with its default) and every metric."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

from service import metrics
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
