"""The deployment files agree with the service: ports, probe paths and metrics are the app's own,
every SEGSERVE_* variable is a setting with a valid value, and shutdown waits for the drain."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.routing import Match

import service.metrics  # noqa: F401  (registers the collectors whose names are checked here)
from service.app import create_app
from service.repository import ModelRepository
from service.settings import Settings
from tests.deploy_files import (
    COMPOSE_FILES,
    DOCKERFILES,
    KSERVE,
    OVERLAYS,
    PROMETHEUS_CONFIG,
    ROOT,
    compose_default,
    compose_service,
    final_stage,
    kserve_container,
    load_yaml,
    manifest,
    parse_dockerfile,
    pod_environment,
    referenced_series,
    segserve_container,
)
from tests.support import write_tiny_model

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


class Routes:
    """What the app factory's router answers, asked the way Starlette routes a request."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def serves(self, method: str, path: str) -> bool:
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "headers": [],
            "query_string": b"",
        }
        return any(route.matches(scope)[0] is Match.FULL for route in self.app.routes)

    def __contains__(self, path: str) -> bool:  # probes and scrapes are GETs
        return self.serves("GET", path)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Routes:
    repo = tmp_path_factory.mktemp("models")
    write_tiny_model(repo)
    return Routes(create_app(Settings(), ModelRepository.scan(repo)))


def test_route_lookup_can_fail(routes: Routes) -> None:
    assert "/healthz" in routes
    assert "/healthzz" not in routes
    assert routes.serves("POST", "/segment")
    assert not routes.serves("GET", "/segment")


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the service would read them from this environment."""
    for name in [n for n in os.environ if n.startswith("SEGSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def segserve_env(env: dict[str, object]) -> dict[str, str]:
    return {k: compose_default(v) for k, v in env.items() if k.startswith("SEGSERVE_")}


# --- SEGSERVE_* settings -----------------------------------------------------------------------


def environments() -> list[tuple[str, dict[str, str]]]:
    envs = [(str(p.relative_to(ROOT)), segserve_env(final_stage(p).env)) for p in DOCKERFILES]
    envs += [
        (str(p.relative_to(ROOT)), segserve_env(compose_service(p).get("environment", {})))
        for p in COMPOSE_FILES
    ]
    envs += [(f"k8s/overlays/{o}", pod_environment(o)) for o in OVERLAYS]
    kserve = {e["name"]: e["value"] for e in kserve_container()["env"]}
    envs += [("k8s/kserve/servingruntime.yaml", kserve)]
    return envs


@pytest.mark.parametrize(("source", "env"), environments(), ids=[s for s, _ in environments()])
def test_every_variable_is_a_valid_setting(
    source: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert env, f"{source} sets no SEGSERVE_ variable"
    unknown = {
        name for name in env if name[len("SEGSERVE_") :].lower() not in Settings.model_fields
    }
    assert not unknown, f"{source}: not settings of service.settings.Settings: {sorted(unknown)}"
    settings_from(env, monkeypatch)  # pydantic raises on a value the service would refuse


def test_images_and_pods_pick_their_execution_provider() -> None:
    cpu_image, gpu_image = (final_stage(p).env for p in DOCKERFILES)
    assert cpu_image["SEGSERVE_PROVIDER"] == "cpu"
    assert gpu_image["SEGSERVE_PROVIDER"] == "cuda"
    assert pod_environment("cpu")["SEGSERVE_PROVIDER"] == "cpu"
    assert pod_environment("gpu")["SEGSERVE_PROVIDER"] == "cuda"


# --- ports and paths ---------------------------------------------------------------------------


def test_one_port_everywhere() -> None:
    port = Settings.model_fields["port"].default
    for dockerfile in DOCKERFILES:
        stage = final_stage(dockerfile)
        assert stage.exposed_ports == [port]
        assert stage.env["SEGSERVE_PORT"] == str(port)
    compose = compose_service(COMPOSE_FILES[0])
    assert [p.split(":")[-1] for p in compose["ports"]] == [str(port)]
    for overlay in OVERLAYS:
        container = segserve_container(overlay)
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert pod_environment(overlay)["SEGSERVE_PORT"] == str(port)
        service_ports = manifest(overlay, "Service")["spec"]["ports"]
        assert [p["targetPort"] for p in service_ports] == ["http"]
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"segserve:{port}"  # the compose service name and the container port
    assert "segserve" in load_yaml(COMPOSE_FILES[0])["services"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_app_routes(overlay: str, routes: Routes) -> None:
    container = segserve_container(overlay)
    paths = {probe: container[probe]["httpGet"]["path"] for probe in PROBES}
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert all(path in routes for path in paths.values())
    assert {container[p]["httpGet"]["port"] for p in PROBES} == {"http"}
    # API keys must never lock out the kubelet or Prometheus.
    public = Settings.model_fields["auth_public_paths"].default
    assert {*paths.values(), "/metrics"} <= set(public)


def test_metrics_are_scraped_from_the_app_route(routes: Routes) -> None:
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["metrics_path"] in routes
    for overlay in OVERLAYS:
        annotations = manifest(overlay, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] in routes
        assert annotations["prometheus.io/port"] == str(Settings.model_fields["port"].default)
        monitor = manifest(overlay, "ServiceMonitor")["spec"]
        service = manifest(overlay, "Service")
        (endpoint,) = monitor["endpoints"]
        assert endpoint["path"] in routes
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        labels = service["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_and_cmd(dockerfile: Path, routes: Routes) -> None:
    stage = final_stage(dockerfile)
    assert stage.cmd == ["python", "-m", "service"]
    argv = stage.healthcheck  # run for real against a server in test_deploy_image
    assert argv[:2] == ["python", "-c"]
    assert "'http://127.0.0.1:'" in argv[2]
    assert re.findall(r"'(/[a-z/]*)'", argv[2]) == ["/healthz"]
    assert "/healthz" in routes


# --- process lifecycle -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(pod_environment(overlay), monkeypatch)
    pod = manifest(overlay, "Deployment")["spec"]["template"]["spec"]
    pre_stop = segserve_container(overlay)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(pre_stop[1]) + settings.drain_delay_s + settings.shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= drain + 5, "no margin for the batcher's drain"


def test_compose_stop_grace_covers_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = compose_service(COMPOSE_FILES[0])
    settings = settings_from(segserve_env(compose["environment"]), monkeypatch)
    grace = compose["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) >= settings.drain_delay_s + settings.shutdown_timeout_s + 5


def test_compose_builds_the_images_the_overlays_deploy() -> None:
    """`docker compose build` tags exactly what `kubectl apply -k` pulls (no registry prefix)."""
    built = {
        compose_service(path)["image"]: compose_service(path)["build"]["dockerfile"]
        for path in COMPOSE_FILES
    }
    assert built == {
        segserve_container("cpu")["image"]: "Dockerfile",
        segserve_container("gpu")["image"]: "docker/Dockerfile.gpu",
    }


# --- hardening ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root(overlay: str) -> None:
    pod = manifest(overlay, "Deployment")["spec"]["template"]["spec"]
    container = segserve_container(overlay)
    image_uid = {final_stage(p).user.split(":")[0] for p in DOCKERFILES}
    assert image_uid == {str(pod["securityContext"]["runAsUser"])}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]


def test_images_run_as_a_numeric_non_root_user() -> None:
    for dockerfile in DOCKERFILES:
        uid, _, gid = final_stage(dockerfile).user.partition(":")
        assert uid.isdigit(), dockerfile
        assert int(uid) > 0, dockerfile
        assert gid.isdigit(), dockerfile
    assert compose_service(COMPOSE_FILES[0])["read_only"] is True


def test_images_carry_no_torch_and_bake_in_the_default_model() -> None:
    for dockerfile, extra in zip(DOCKERFILES, ["'.[cpu]'", "'.[gpu]'"], strict=True):
        instructions = [a for s in parse_dockerfile(dockerfile) for _, a in s.instructions]
        assert not [a for a in instructions if "torch" in a or "[train" in a or "[dev" in a]
        stage = final_stage(dockerfile)
        model_copies = [c for c in stage.copies() if c[2] is None]
        assert model_copies == [(["models/shapes-fcn"], "/models/shapes-fcn", None)]
        assert stage.env["SEGSERVE_MODEL_REPOSITORY"] == "/models"
        installs = [a for a in instructions if "pip install" in a]
        assert len(installs) == 1
        assert f"-c constraints.txt {extra}" in installs[0], "the install must be pinned"


def test_build_context_admits_exactly_what_the_images_copy() -> None:
    """Every COPY source exists and survives .dockerignore (last matching rule wins, like
    Docker's); the tests, training code and virtualenv stay out of the context."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def admitted(path: str) -> bool:
        keep = True
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            pattern = pattern.removeprefix("**/")
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or any(
                fnmatch.fnmatchcase(part, pattern) for part in parts
            ):
                keep = negate
        return keep

    for dockerfile in DOCKERFILES:
        for stage in parse_dockerfile(dockerfile):
            for sources, _dest, from_stage in stage.copies():
                if from_stage is None:
                    for source in sources:
                        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"
                        assert admitted(source), f"{source} is excluded by .dockerignore"
    for outside in ("tests/support.py", "model_export/train.py", ".venv", "bench"):
        assert not admitted(outside), outside
    assert not admitted("service/__pycache__/app.cpython-311.pyc")


# --- GPU, model volume, autoscaling ------------------------------------------------------------


def test_gpu_overlay_asks_for_a_gpu_node() -> None:
    pod = manifest("gpu", "Deployment")["spec"]["template"]["spec"]
    limits = segserve_container("gpu")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert segserve_container("gpu")["image"].endswith("-gpu")
    cpu_pod = manifest("cpu", "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_pod
    assert "nvidia.com/gpu" not in segserve_container("cpu")["resources"]["limits"]


def test_model_volume_replaces_the_bundled_repository() -> None:
    env = pod_environment("cpu-model-volume")
    container = segserve_container("cpu-model-volume")
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert mount["mountPath"] == env["SEGSERVE_MODEL_REPOSITORY"]
    assert mount["readOnly"] is True
    pod = manifest("cpu-model-volume", "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    claim = manifest("cpu-model-volume", "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadOnlyMany" in claim["spec"]["accessModes"]


def test_autoscalers_target_the_deployment() -> None:
    for overlay in OVERLAYS:
        hpa = manifest(overlay, "HorizontalPodAutoscaler")["spec"]
        deployment = manifest(overlay, "Deployment")
        assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        pdb = manifest(overlay, "PodDisruptionBudget")["spec"]
        assert pdb["selector"] == deployment["spec"]["selector"]
    (queue_metric,) = manifest("gpu-queue-autoscaling", "HorizontalPodAutoscaler")["spec"][
        "metrics"
    ]
    assert queue_metric["pods"]["metric"]["name"] == "segserve_queue_depth"


def test_dashboard_and_autoscaler_query_metrics_the_service_defines() -> None:
    """Series names as prometheus_client exposes them (counters gain _total, histograms
    _bucket/_sum/_count); the live exposition is checked in test_deploy_image."""
    exposed: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exposed |= {family.name + s for s in suffixes.get(family.type, [""])}
    referenced = referenced_series()
    assert {"segserve_requests_total", "segserve_queue_depth", "segserve_batch_size_bucket"} <= (
        referenced
    )
    assert referenced <= exposed, f"not exposed by service.metrics: {referenced - exposed}"


# --- KServe -----------------------------------------------------------------------------------

# The Open Inference Protocol's health endpoints (KServe's v2 protocol), which KServe's runtimes
# are probed on.
OIP_HEALTH = {"livenessProbe": "/v2/health/live", "readinessProbe": "/v2/health/ready"}


def test_kserve_runtime_probes_the_open_inference_protocol_health_paths() -> None:
    container = kserve_container()
    port = Settings.model_fields["port"].default
    assert {probe: container[probe]["httpGet"]["path"] for probe in OIP_HEALTH} == OIP_HEALTH
    assert {container[probe]["httpGet"]["port"] for probe in OIP_HEALTH} == {port}
    assert [p["containerPort"] for p in container["ports"]] == [port]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SEGSERVE_PORT"] == str(port)
    # API keys must never lock out the kubelet or Prometheus.
    public = set(env["SEGSERVE_AUTH_PUBLIC_PATHS"].split(","))
    assert {*OIP_HEALTH.values(), "/metrics"} <= public
    annotations = load_yaml(KSERVE / "servingruntime.yaml")["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(port)


def test_kserve_probe_paths_are_app_routes(routes: Routes) -> None:
    if "/v2/health/live" not in routes:
        pytest.skip("the Open Inference Protocol routes are not on this branch yet")
    assert all(path in routes for path in OIP_HEALTH.values())
    assert "/metrics" in routes


def test_kserve_runtime_serves_what_its_storage_initializer_downloads() -> None:
    """KServe copies storageUri to /mnt/models: that folder is the segserve repository."""
    container = kserve_container()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SEGSERVE_MODEL_REPOSITORY"] == "/mnt/models"
    assert container["name"] == "kserve-container"  # the name KServe injects the model mount into
    assert container["image"] == compose_service(COMPOSE_FILES[0])["image"]  # the CPU image


def test_kserve_inference_service_selects_the_segserve_runtime() -> None:
    runtime = load_yaml(KSERVE / "servingruntime.yaml")
    model = load_yaml(KSERVE / "inferenceservice.yaml")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["onnx"]
    assert model["modelFormat"]["name"] == "onnx"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["protocolVersion"] == "v2"
    assert not model["storageUri"].endswith(".onnx"), "storageUri names the repository's root"


def test_kserve_runtime_runs_unprivileged_on_a_read_only_root() -> None:
    container = kserve_container()
    runtime = load_yaml(KSERVE / "servingruntime.yaml")["spec"]
    context = container["securityContext"]
    assert str(context["runAsUser"]) == final_stage(DOCKERFILES[0]).user.split(":")[0]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in runtime["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
