"""The deployment files pass the real validators (hadolint, yamllint, the compose spec schema,
kustomize + the Kubernetes OpenAPI schemas), and those validators do reject broken files."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy_files import (
    COMPOSE_FILES,
    DOCKERFILES,
    KSERVE_SCHEMAS,
    OVERLAYS,
    PROMETHEUS_CONFIG,
    ROOT,
    YAML_PATHS,
    dashboard_queries,
    manifest,
    render_overlay,
    tool,
)

# An older release the manifests keep working on (they use nothing newer than autoscaling/v2 and
# policy/v1) and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
# CRDs have no schema in kubernetes-validate: test_deploy_consistency checks them by hand.
CUSTOM_RESOURCES = {"ServiceMonitor"}


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    result = run(tool("hadolint"), "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n"
    )
    result = run(tool("hadolint"), "--no-color", bad)
    assert result.returncode != 0
    # untagged base image, unpinned apt packages, shell-form CMD
    assert {"DL3006", "DL3008", "DL3025"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_yamllint_passes() -> None:
    result = run(tool("yamllint"), "--strict", "-c", ROOT / ".yamllint.yaml", *YAML_PATHS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("compose", COMPOSE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_file_matches_the_compose_spec(compose: Path) -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_a_wrong_field(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  web:\n    image: nginx\n    portz: ['80:80']\n")
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad)
    assert result.returncode != 0
    assert "portz" in result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_matches_kubernetes_schemas(overlay: str, version: str) -> None:
    docs = render_overlay(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "ServiceMonitor",
    } <= kinds
    for doc in docs:
        if doc["kind"] not in CUSTOM_RESOURCES:
            kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_schema_check_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(manifest("cpu", "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("path", KSERVE_SCHEMAS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kserve_manifest_matches_the_kserve_crd_schema(path: Path) -> None:
    result = run(tool("check-jsonschema"), "--schemafile", KSERVE_SCHEMAS[path], path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "field", "misspelt"),
    [
        ("servingruntime.yaml", "readinessProbe:", "readinesProbe:"),
        ("inferenceservice.yaml", "storageUri:", "storageURI:"),
        ("inferenceservice.yaml", "kind: InferenceService", "kind: InferenceServices"),
    ],
)
def test_kserve_schema_check_rejects_a_misspelt_field(
    path: str, field: str, misspelt: str, tmp_path: Path
) -> None:
    (source,) = [p for p in KSERVE_SCHEMAS if p.name == path]
    assert field in source.read_text()
    bad = tmp_path / path
    bad.write_text(source.read_text().replace(field, misspelt))
    result = run(tool("check-jsonschema"), "--schemafile", KSERVE_SCHEMAS[source], bad)
    assert result.returncode != 0
    assert misspelt.split(":")[0].split()[-1] in result.stdout + result.stderr


# promtool ships with Prometheus (Debian's `prometheus` package), not with any PyPI wheel: these
# run where it is installed (`make deploy-lint` runs it too) and are skipped elsewhere.
needs_promtool = pytest.mark.skipif(
    not any(Path(d, "promtool").exists() for d in ("/usr/bin", "/usr/local/bin")),
    reason="promtool (Debian package prometheus) not installed",
)


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    result = run("promtool", "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Grafana fills in its variables before Prometheus sees a query; do the same, then let
    # promtool parse each query as the expression of a recording rule.
    rules = [
        {
            "record": f"segserve:dashboard_query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$model", ".*"),
        }
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run("promtool", "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
