"""The model repository: layout discovery, default model, latest version, resolution, cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.errors import ModelLoadError, ModelNotFound
from service.model_card import METADATA_KEY, ModelCard
from service.repository import ModelRepository, ModelVersion, survey
from tests.support import tiny_card


def touch_model(root: Path, name: str, version: str) -> Path:
    path = root / name / version / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"discovery does not read the file")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name, version in [("zeta", "1"), ("alpha", "1"), ("alpha", "2"), ("alpha", "10")]:
        touch_model(tmp_path, name, version)
    return tmp_path


def test_scan_finds_every_model_and_version_in_order(repo: Path) -> None:
    repository = ModelRepository.scan(repo)
    assert list(repository.versions) == ["alpha", "zeta"]
    assert list(repository.versions["alpha"]) == [1, 2, 10]  # numeric, not lexical
    assert [v.key for v in repository.all()] == ["alpha:1", "alpha:2", "alpha:10", "zeta:1"]
    assert repository.versions["zeta"][1].path == repo / "zeta" / "1" / "model.onnx"


def test_default_is_the_setting_else_the_first_by_name(repo: Path) -> None:
    assert ModelRepository.scan(repo).default == "alpha"
    assert ModelRepository.scan(repo, "zeta").default == "zeta"
    with pytest.raises(ModelLoadError, match="SEGSERVE_DEFAULT_MODEL=nope"):
        ModelRepository.scan(repo, "nope")


def test_resolve_defaults_to_the_default_model_and_latest_version(repo: Path) -> None:
    repository = ModelRepository.scan(repo)
    assert repository.resolve(None, None) == ModelVersion("alpha", 10, repo / "alpha/10/model.onnx")
    assert repository.resolve("alpha", 2).version == 2
    assert repository.resolve("zeta", None).key == "zeta:1"


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("beta", None, "no model named 'beta'"),
        ("alpha", 3, "has no version 3"),
        (None, 99, "has no version 99"),
    ],
)
def test_resolve_unknown_is_model_not_found(
    repo: Path, name: str | None, version: int | None, message: str
) -> None:
    with pytest.raises(ModelNotFound, match=message):
        ModelRepository.scan(repo).resolve(name, version)


def test_folders_that_are_not_versions_are_ignored(repo: Path) -> None:
    touch_model(repo, "alpha", "latest")
    touch_model(repo, "alpha", "0")
    (repo / "alpha" / "11").mkdir()  # no model.onnx in it
    (repo / "README.md").write_text("not a model")
    assert list(ModelRepository.scan(repo).versions["alpha"]) == [1, 2, 10]


def policy(root: Path, name: str, version_policy: object) -> None:
    (root / name / "config.json").write_text(json.dumps({"version_policy": version_policy}))


@pytest.mark.parametrize(
    ("version_policy", "served"),
    [
        ({"all": {}}, [1, 2, 10]),
        ({"latest": {"num_versions": 2}}, [2, 10]),
        ({"latest": {"num_versions": "1"}}, [10]),
        ({"specific": {"versions": [1, 10, 7]}}, [1, 10]),
        ({"specific": {"versions": ["2", "10"]}}, [2, 10]),  # Triton's JSON writes int64 so
    ],
)
def test_the_version_policy_chooses_the_versions(
    repo: Path, version_policy: object, served: list[int]
) -> None:
    policy(repo, "alpha", version_policy)
    assert list(ModelRepository.scan(repo).versions["alpha"]) == served


@pytest.mark.parametrize(
    "version_policy",
    [
        {"newest": {}},
        {"latest": {"num_versions": 0}},
        {"latest": {"num_versions": True}},
        {"latest": {}},
        {"specific": {"versions": [True]}},
        {"specific": {"versions": ["one"]}},
        {"specific": {"versions": 1}},
        {"all": {}, "latest": {"num_versions": 1}},
    ],
)
def test_a_policy_that_cannot_be_read_stops_the_start_but_not_a_survey(
    repo: Path, version_policy: object
) -> None:
    policy(repo, "alpha", version_policy)
    with pytest.raises(ModelLoadError, match=r"alpha/config\.json: invalid version_policy"):
        ModelRepository.scan(repo)
    found = survey(repo)  # model control: the other models are unaffected
    assert list(found.unreadable) == ["alpha"]
    assert list(found.chosen) == ["zeta"]
    assert [v.key for v in found.all_on_disk()] == ["alpha:1", "alpha:2", "alpha:10", "zeta:1"]


def test_missing_or_empty_repository_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelRepository.scan(tmp_path / "missing")
    (tmp_path / "empty" / "model" / "1").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="no models in"):
        ModelRepository.scan(tmp_path / "empty")


def test_the_card_is_read_or_explained() -> None:
    where = Path("models/tiny/1/model.onnx")
    card = tiny_card()
    assert ModelCard.from_metadata(card.to_metadata(), where) == card
    with pytest.raises(ModelLoadError, match=f"models/tiny/1/model.onnx.*no '{METADATA_KEY}'"):
        ModelCard.from_metadata({}, where)
    with pytest.raises(ModelLoadError, match="invalid model card"):
        ModelCard.from_metadata({METADATA_KEY: "{not json"}, where)
    with pytest.raises(ModelLoadError, match="classes"):
        ModelCard.from_metadata(
            {METADATA_KEY: card.model_dump_json().replace('"red"', '""')}, where
        )
