"""The model repository: ``<root>/<name>/<version>/model.onnx``, its default model and versions.

Discovery only looks at the folder layout and each model's optional ``config.json``, whose
``version_policy`` says which versions are served, in Triton's shape (its ``config.pbtxt`` as
JSON): ``{"version_policy": {"all": {}}}`` (the default), ``{"latest": {"num_versions": 2}}`` or
``{"specific": {"versions": [1, 3]}}`` (version numbers as integers or, as Triton's JSON writes
them, strings). ``ModelRepository.scan`` reads what a start serves, and any unreadable policy
stops it; ``survey`` reads the folder model by model for model control, where one model's
unreadable policy must not hold up the others. The model card is read from the file's
``metadata_props`` when the session is created (``ModelCard.from_metadata``), so a file is
opened once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.errors import ModelLoadError, ModelNotFound

log = logging.getLogger("segserve.repository")

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"


@dataclass(frozen=True, slots=True, order=True)
class ModelVersion:
    name: str
    version: int
    path: Path

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def labels(self) -> tuple[str, str]:
        """(model, version): this version's metric labels."""
        return self.name, str(self.version)


class ModelRepository:
    """What the repository folder holds; ``resolve`` maps a request's model/version to one."""

    def __init__(self, versions: Mapping[str, Mapping[int, ModelVersion]], default: str) -> None:
        self.versions = {name: dict(sorted(v.items())) for name, v in sorted(versions.items())}
        self.default = default

    @classmethod
    def scan(cls, root: Path, default_model: str | None = None) -> ModelRepository:
        """What ``root`` serves at start-up; ModelLoadError when it cannot all be read."""
        found = survey(root)
        if found.unreadable:
            raise ModelLoadError(next(iter(found.unreadable.values())))
        chosen = found.chosen
        if not chosen:
            raise ModelLoadError(
                f"no models in {root.resolve()}: expected <name>/<version>/{MODEL_FILE}"
            )
        if default_model is None:
            default_model = next(iter(sorted(chosen)))
        elif default_model not in chosen:
            raise ModelLoadError(
                f"SEGSERVE_DEFAULT_MODEL={default_model} is not in {root} "
                f"(found: {', '.join(sorted(chosen))})"
            )
        return cls(chosen, default_model)

    def all(self) -> list[ModelVersion]:
        return [v for versions in self.versions.values() for v in versions.values()]

    def latest(self, name: str) -> ModelVersion:
        return next(reversed(self.versions[name].values()))

    def resolve(self, name: str | None, version: int | None) -> ModelVersion:
        """The model a request asks for: default model, latest version unless named."""
        name = self.default if name is None else name
        versions = self.versions.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named '{name}' (available: {', '.join(self.versions)})")
        if version is None:
            return self.latest(name)
        if version not in versions:
            raise ModelNotFound(
                f"model '{name}' has no version {version} "
                f"(available: {', '.join(map(str, versions))})"
            )
        return versions[version]


@dataclass(frozen=True, slots=True)
class Survey:
    """One look at the repository folder."""

    on_disk: dict[str, dict[int, ModelVersion]]  # every version folder with a model file
    chosen: dict[str, dict[int, ModelVersion]]  # those each model's version policy serves
    unreadable: dict[str, str]  # model -> why its version policy cannot be read

    def all_on_disk(self) -> list[ModelVersion]:
        return [v for versions in self.on_disk.values() for v in versions.values()]


def survey(root: Path) -> Survey:
    """What ``root`` holds, model by model: a model whose version policy cannot be read is in
    ``unreadable`` (and chooses nothing), the others are unaffected. ModelLoadError only when
    ``root`` is not a folder."""
    if not root.is_dir():
        raise ModelLoadError(
            f"model repository {root.resolve()} does not exist or is not a "
            "folder (set SEGSERVE_MODEL_REPOSITORY)"
        )
    on_disk: dict[str, dict[int, ModelVersion]] = {}
    chosen: dict[str, dict[int, ModelVersion]] = {}
    unreadable: dict[str, str] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = _versions_on_disk(model_dir)
        if not versions:
            continue
        on_disk[model_dir.name] = versions
        try:
            served = _chosen_versions(model_dir, versions)
        except ModelLoadError as exc:
            unreadable[model_dir.name] = str(exc)
            continue
        if served:
            chosen[model_dir.name] = served
        else:
            log.warning(
                "ignoring %s: its version policy chooses none of its versions (%s)",
                model_dir,
                ", ".join(map(str, versions)),
            )
    return Survey(on_disk, chosen, unreadable)


def _versions_on_disk(model_dir: Path) -> dict[int, ModelVersion]:
    found: dict[int, ModelVersion] = {}
    for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        path = version_dir / MODEL_FILE
        if not version_dir.name.isdigit() or int(version_dir.name) < 1:
            log.warning("ignoring %s: a version folder is a positive integer", version_dir)
        elif not path.is_file():
            log.warning("ignoring %s: no %s in it", version_dir, MODEL_FILE)
        else:
            found[int(version_dir.name)] = ModelVersion(model_dir.name, int(version_dir.name), path)
    return dict(sorted(found.items()))


def _chosen_versions(model_dir: Path, versions: dict[int, ModelVersion]) -> dict[int, ModelVersion]:
    """The versions that ``model_dir``'s version policy serves; ModelLoadError when the policy
    cannot be read."""
    config = model_dir / CONFIG_FILE
    if not config.is_file():
        return versions
    try:
        policy = json.loads(config.read_text()).get("version_policy", {"all": {}})
        (kind, value), *rest = policy.items()
        if rest or not isinstance(value, dict):
            raise ValueError("give exactly one of all, latest, specific")
        if kind == "all":
            return versions
        if kind == "latest":
            count = _policy_integer(value["num_versions"])
            if count < 1:
                raise ValueError("latest.num_versions must be a positive integer")
            return dict(sorted(versions.items())[-count:])
        if kind == "specific":
            if not isinstance(value["versions"], list):
                raise ValueError("specific.versions must be a list of version numbers")
            wanted = {_policy_integer(v) for v in value["versions"]}
            return {v: ref for v, ref in versions.items() if v in wanted}
        raise ValueError(f"unknown version policy '{kind}' (all, latest, specific)")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # json.JSONDecodeError is a ValueError; the rest are a policy of the wrong shape.
        raise ModelLoadError(f"{config}: invalid version_policy: {exc!r}") from exc


def _policy_integer(value: object) -> int:
    """A number of the policy: an integer, or its decimal string (the protobuf JSON form of
    Triton's int64 fields, as its ``versions`` are written)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{value!r} is not an integer")
