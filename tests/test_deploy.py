"""deploy/: every manifest against the Kubernetes schemas, plus what the schemas cannot know.

kubernetes-validate ships the schemas of Kubernetes' own kinds only. A kind it has no schema
for (KServe's InferenceService and ServingRuntime, kustomize's Kustomization) gets a warning
and exit status 0, which proves nothing: those files are checked here for that warning, and
the core Kubernetes objects they embed (containers, volumes, resources) are validated strictly
by wrapping them in a Pod, whose schema is the real one for them.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy" / "kubernetes"
KSERVE = REPO / "deploy" / "kserve"
KUSTOMIZE_KIND = "Kustomization"
KSERVE_GROUP = "serving.kserve.io/"
CONTAINER = "digitgrad"


def load(path: Path) -> dict:
    """The one YAML document of ``path``."""
    (document,) = list(yaml.safe_load_all(path.read_text()))
    return document


def kustomization_entries(directory: Path) -> tuple[list[Path], list[Path]]:
    """(resource files, patch files) a kustomization applies, with bases followed."""
    kustomization = load(directory / "kustomization.yaml")
    resources, patches = [], [directory / p["path"] for p in kustomization.get("patches", [])]
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        if path.is_dir():
            more_resources, more_patches = kustomization_entries(path)
            resources += more_resources
            patches += more_patches
        else:
            resources.append(path)
    return resources, patches


def manifests() -> list[Path]:
    """Every file an operator applies: kustomizations' resources and the KServe manifests."""
    found = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        found.update(kustomization_entries(kustomization.parent)[0])
    return sorted(found) + sorted(KSERVE.glob("*.yaml"))


def by_kind(kind: str, directory: Path = KUBERNETES) -> dict:
    (document,) = [load(p) for p in directory.glob("*.yaml") if load(p)["kind"] == kind]
    return document


def pod_spec(kind: str) -> dict:
    """The pod-level spec of the Deployment, or of the KServe ServingRuntime."""
    if kind == "Deployment":
        return by_kind("Deployment")["spec"]["template"]["spec"]
    return by_kind("ServingRuntime", KSERVE)["spec"]


def container(spec: dict) -> dict:
    (found,) = spec["containers"]
    return found


def env(spec: dict) -> dict:
    """Plain-valued environment variables of the container."""
    return {e["name"]: e["value"] for e in container(spec)["env"] if "value" in e}


def gunicorn_settings(monkeypatch, tmp_path, environment: dict) -> dict:
    """gunicorn.conf.py's settings as the container's environment makes them."""
    for name in ("BIND", "PORT", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(REPO / "gunicorn.conf.py"))


# -- schemas -----------------------------------------------------------------------------------
def test_every_yaml_file_is_applied_or_patched():
    applied = set(manifests())
    patches = {p for k in KUBERNETES.rglob("kustomization.yaml")
               for p in kustomization_entries(k.parent)[1]}
    for path in REPO.joinpath("deploy").rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path in applied | patches, f"{path} is in no kustomization"
    assert all(p.is_file() for p in applied | patches)


def test_kubernetes_validate_strict_passes_every_manifest():
    paths = manifests()
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, paths)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    for path in paths:
        if load(path)["apiVersion"].startswith(KSERVE_GROUP):
            # no schema for KServe's kinds: a warning, not a validation (see the docstring)
            assert re.search(rf"WARN {re.escape(str(path))} Couldn't find schema", out), out
        else:
            assert re.search(rf"INFO {re.escape(str(path))} passed", out), out
    assert "ERROR" not in out


def test_kserve_manifests_embed_valid_core_objects():
    def validate_pod(containers: list, volumes: list | None = None) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
               "spec": {"containers": containers, **({"volumes": volumes} if volumes else {})}}
        kubernetes_validate.validate(pod, "1.37", strict=True)

    runtime = pod_spec("ServingRuntime")
    validate_pod(runtime["containers"], runtime.get("volumes"))
    assert runtime["protocolVersions"] == ["v2"]
    formats = {f["name"] for f in runtime["supportedModelFormats"]}
    for path in KSERVE.glob("inferenceservice*.yaml"):
        service = load(path)
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        model = service["spec"]["predictor"]["model"]
        assert model["protocolVersion"] == "v2"
        if "resources" in model:
            validate_pod([{"name": "model", "image": "x", "resources": model["resources"]}])
        if model["modelFormat"]["name"] == "digitgrad":
            assert model["runtime"] == runtime_name() and "digitgrad" in formats
        else:
            assert model["modelFormat"]["name"] == "onnx"


def runtime_name() -> str:
    return by_kind("ServingRuntime", KSERVE)["metadata"]["name"]


# -- what the schemas cannot know ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_probes_ask_real_routes_of_the_app(app, kind):
    routes = {rule.rule: rule.methods for rule in app.url_map.iter_rules()}
    spec = container(pod_spec(kind))
    probes = {name: spec[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")
              if name in spec}
    assert "readinessProbe" in probes
    for name, probe in probes.items():
        path = probe["httpGet"]["path"]
        assert path in routes and "GET" in routes[path], f"{kind} {name}: no GET {path}"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    if kind == "Deployment":
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_ports_match_where_gunicorn_binds(monkeypatch, tmp_path, kind):
    spec = container(pod_spec(kind))
    settings = gunicorn_settings(monkeypatch, tmp_path, env(pod_spec(kind)))
    (port,) = spec["ports"]
    assert settings["bind"] == f"0.0.0.0:{port['containerPort']}"
    named = {p.get("name"): p["containerPort"] for p in spec["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in spec:
            target = spec[probe]["httpGet"]["port"]
            assert named.get(target, target) == port["containerPort"], probe
    if kind == "Deployment":
        service = by_kind("Service")
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
        annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port["containerPort"])


def dockerfile_uid() -> int:
    (user,) = re.findall(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_security_context_is_locked_down(kind):
    spec = pod_spec(kind)
    pod_context = spec.get("securityContext", {})
    context = {**pod_context, **container(spec)["securityContext"]}
    assert context["runAsNonRoot"] is True and context["runAsUser"] == dockerfile_uid()
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not context.get("privileged", False)
    # /tmp is an emptyDir; the shared metrics live apart from it, in /dev/shm, so that a full
    # /tmp cannot make the workers' writes to them fail
    mounts = {m["mountPath"]: m["name"] for m in container(spec)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env(spec)["PROMETHEUS_MULTIPROC_DIR"].startswith("/dev/shm/")


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_workers_follow_the_cpu_limit(monkeypatch, tmp_path, kind):
    spec = container(pod_spec(kind))
    (workers,) = [e for e in spec["env"] if e["name"] == "WEB_CONCURRENCY"]
    field = workers["valueFrom"]["resourceFieldRef"]
    assert field == {"containerName": spec["name"], "resource": "limits.cpu", "divisor": "1"}
    assert "cpu" in spec["resources"]["limits"]
    # the downward API gives "2" for a 2-CPU limit; gunicorn.conf.py makes that 2 workers
    limit = str(spec["resources"]["limits"]["cpu"])
    settings = gunicorn_settings(monkeypatch, tmp_path, {"WEB_CONCURRENCY": limit})
    assert settings["workers"] == int(limit)


def test_termination_waits_for_in_flight_requests(monkeypatch, tmp_path):
    spec = pod_spec("Deployment")
    settings = gunicorn_settings(monkeypatch, tmp_path, env(spec))
    command = container(spec)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # the grace period runs from the preStop hook: sleep, then gunicorn's graceful shutdown
    assert spec["terminationGracePeriodSeconds"] > int(command[1]) + settings["graceful_timeout"]


def test_autoscaler_and_disruption_budget_point_at_the_pods():
    deployment, hpa, pdb = by_kind("Deployment"), by_kind("HorizontalPodAutoscaler"), \
        by_kind("PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    # the autoscaler owns the count: a replicas field would reset it on every apply
    assert "replicas" not in deployment["spec"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # utilization is measured against the CPU request: there must be one
    assert "cpu" in container(pod_spec("Deployment"))["resources"]["requests"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"],
                     pdb["spec"]["selector"]["matchLabels"],
                     by_kind("Service")["spec"]["selector"]):
        assert selector.items() <= labels.items()
    # a drain can always proceed: the budget keeps fewer pods than the autoscaler's minimum
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_model_volume_overlay_mounts_the_claim_where_model_path_points():
    overlay = KUBERNETES / "model-volume"
    _, (patch_path,) = kustomization_entries(overlay)
    patch = load(patch_path)
    deployment = by_kind("Deployment")
    assert patch["metadata"]["name"] == deployment["metadata"]["name"]
    patched = container(patch["spec"]["template"]["spec"])
    assert patched["name"] == container(pod_spec("Deployment"))["name"] == CONTAINER
    (mount,) = patched["volumeMounts"]
    (volume,) = patch["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"] and mount["readOnly"] is True
    assert volume["persistentVolumeClaim"]["claimName"] == \
        by_kind("PersistentVolumeClaim", overlay)["metadata"]["name"]
    model_path = {e["name"]: e["value"] for e in patched["env"]}["MODEL_PATH"]
    assert model_path.startswith(mount["mountPath"] + "/")
