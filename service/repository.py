"""The model repository: ``<root>/<name>/<version>/model.onnx``, its default model and versions.

Discovery only looks at the folder layout and each model's optional ``config.json``, whose
``version_policy`` says which versions are served, in Triton's shape (its ``config.pbtxt`` as
JSON): ``{"version_policy": {"all": {}}}`` (the default), ``{"latest": {"num_versions": 2}}`` or
``{"specific": {"versions": [1, 3]}}``. The model card is read from the file's
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
        if not root.is_dir():
            raise ModelLoadError(
                f"model repository {root.resolve()} does not exist or is not a "
                "folder (set SEGSERVE_MODEL_REPOSITORY)"
            )
        found: dict[str, dict[int, ModelVersion]] = {}
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                path = version_dir / MODEL_FILE
                if not version_dir.name.isdigit() or int(version_dir.name) < 1:
                    log.warning("ignoring %s: a version folder is a positive integer", version_dir)
                elif not path.is_file():
                    log.warning("ignoring %s: no %s in it", version_dir, MODEL_FILE)
                else:
                    v = ModelVersion(model_dir.name, int(version_dir.name), path)
                    found.setdefault(model_dir.name, {})[v.version] = v
            if model_dir.name in found:
                found[model_dir.name] = _served_versions(model_dir, found[model_dir.name])
        found = {name: versions for name, versions in found.items() if versions}
        if not found:
            raise ModelLoadError(
                f"no models in {root.resolve()}: expected <name>/<version>/{MODEL_FILE}"
            )
        if default_model is None:
            default_model = next(iter(sorted(found)))
        elif default_model not in found:
            raise ModelLoadError(
                f"SEGSERVE_DEFAULT_MODEL={default_model} is not in {root} "
                f"(found: {', '.join(sorted(found))})"
            )
        return cls(found, default_model)

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


def _served_versions(model_dir: Path, versions: dict[int, ModelVersion]) -> dict[int, ModelVersion]:
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
            count = value["num_versions"]
            if not isinstance(count, int) or count < 1:
                raise ValueError("latest.num_versions must be a positive integer")
            return dict(sorted(versions.items())[-count:])
        if kind == "specific":
            return {v: versions[v] for v in value["versions"] if v in versions}
        raise ValueError(f"unknown version policy '{kind}' (all, latest, specific)")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # json.JSONDecodeError is a ValueError; the rest are a policy of the wrong shape.
        raise ModelLoadError(f"{config}: invalid version_policy: {exc!r}") from exc
