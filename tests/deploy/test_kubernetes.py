"""deploy/kubernetes/: Deployment, Services, PodDisruptionBudget, example Secret and the kustomization."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from .deployfiles import K8S, k8s_container, k8s_deployment, k8s_objects, load_yaml, settings_for


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = k8s_deployment()["spec"]["template"]["spec"]
    return pod


def _pod_labels() -> dict[str, str]:
    labels: dict[str, str] = k8s_deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def _named_ports() -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in k8s_container()["ports"]}


def _settings() -> Any:
    container = k8s_container()
    env = {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}
    return settings_for(container.get("args") or ["run"], env)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_has_an_api_version_kind_and_name() -> None:
    for (kind, name), obj in k8s_objects().items():
        assert obj["apiVersion"], (kind, name)
        assert obj["metadata"]["name"] == name


def test_three_replicas_rolling_without_unavailability() -> None:
    spec = k8s_deployment()["spec"]
    assert spec["replicas"] >= 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1


def test_deployment_selector_matches_its_pods() -> None:
    assert _selects(k8s_deployment()["spec"]["selector"]["matchLabels"], _pod_labels())


@pytest.mark.parametrize(
    ("probe", "path"),
    [
        pytest.param("readinessProbe", "/-/ready", id="readiness"),
        pytest.param("livenessProbe", "/-/healthy", id="liveness"),
    ],
)
def test_probes_use_the_admin_port(probe: str, path: str) -> None:
    get = k8s_container()[probe]["httpGet"]
    assert get["path"] == path
    port = get["port"]
    assert (_named_ports()[port] if isinstance(port, str) else port) == _settings().admin_listen.port


def test_container_ports_match_the_listeners() -> None:
    settings = _settings()
    assert _named_ports() == {"http": settings.listen.port, "admin": settings.admin_listen.port}


def test_pre_stop_sleep_then_drain_fits_the_grace_period() -> None:
    pre_stop = k8s_container()["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pause >= 3, "give endpoints and kube-proxy time to drop the pod before the drain starts"
    assert _pod()["terminationGracePeriodSeconds"] > pause + _settings().drain_timeout


@pytest.mark.parametrize(
    ("where", "key", "expected"),
    [
        pytest.param("pod", "runAsNonRoot", True, id="pod-runAsNonRoot"),
        pytest.param("container", "runAsNonRoot", True, id="container-runAsNonRoot"),
        pytest.param("container", "readOnlyRootFilesystem", True, id="readOnlyRootFilesystem"),
        pytest.param("container", "allowPrivilegeEscalation", False, id="allowPrivilegeEscalation"),
        pytest.param("container", "capabilities", {"drop": ["ALL"]}, id="drop-all-capabilities"),
        pytest.param("pod", "seccompProfile", {"type": "RuntimeDefault"}, id="seccomp"),
    ],
)
def test_security_context(where: str, key: str, expected: object) -> None:
    context = (_pod() if where == "pod" else k8s_container())["securityContext"]
    assert context[key] == expected


def test_runs_as_the_image_uid() -> None:
    assert _pod()["securityContext"]["runAsUser"] == 10001
    assert _pod()["automountServiceAccountToken"] is False


def test_resources_have_requests_and_limits() -> None:
    resources = k8s_container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("name", ["CONSUL_HTTP_TOKEN", "CONSULGW_REDIS_URL"])
def test_secrets_come_from_the_secret(name: str) -> None:
    (entry,) = [e for e in k8s_container()["env"] if e["name"] == name]
    ref = entry["valueFrom"]["secretKeyRef"]
    secret = k8s_objects()[("Secret", ref["name"])]
    assert ref["key"] in secret["stringData"]


def test_pdb_selects_the_gateway_pods_and_leaves_some_up() -> None:
    pdb = k8s_objects()[("PodDisruptionBudget", "consulgw")]
    assert pdb["apiVersion"] == "policy/v1"
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels())
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] < k8s_deployment()["spec"]["replicas"]
    else:
        assert pdb["spec"]["minAvailable"] < k8s_deployment()["spec"]["replicas"]


@pytest.mark.parametrize(
    "name", [pytest.param(n, id=n) for (kind, n) in k8s_objects() if kind == "Service"] or [pytest.param("none")]
)
def test_service_selects_the_pods_and_targets_a_container_port(name: str) -> None:
    service = k8s_objects()[("Service", name)]
    assert _selects(service["spec"]["selector"], _pod_labels())
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in _named_ports(), port


def test_public_service_targets_the_public_listener_only() -> None:
    service = k8s_objects()[("Service", "consulgw")]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_kustomization_lists_existing_files_but_not_the_example_secret() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert {"deployment.yaml", "service.yaml", "pdb.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources
    for name in resources:
        assert (K8S / name).is_file(), name
    images = {i["name"] for i in kustomization.get("images", [])}
    assert k8s_container()["image"].split(":")[0] in images


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_objects() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc)
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service", "Service"]
