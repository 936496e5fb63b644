"""deploy/k8s: every manifest validates (strictly: no unknown fields) against the schemas of a pinned Kubernetes
version with kubernetes-validate, and the manifests agree with each other and with keel's own drain times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keel.cli import GRACEFUL_SHUTDOWN
from keel.realtime.hub import DRAIN_TIMEOUT

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor the main managed offerings still support
KUSTOMIZATION = K8S / "kustomization.yaml"  # kustomize's own kind: no Kubernetes schema to check it against


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in deploy/k8s by (kind, name)."""
    resources = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path != KUSTOMIZATION:
            for document in yaml.safe_load_all(path.read_text()):
                resources[document["kind"], document["metadata"]["name"]] = document
    return resources


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


def test_every_manifest_validates_against_the_pinned_kubernetes_version() -> None:
    files = sorted(str(path) for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)
    validate = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(validate), "--strict", "-k", KUBERNETES_VERSION, *files], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # kubernetes-validate only warns about a kind it has no schema for: that must not pass for a check
    assert len(lines) == len(manifests())
    assert all(line.startswith("INFO") and " passed " in line for line in lines), result.stdout


def test_kustomization_applies_every_manifest() -> None:
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    assert sorted(listed) == sorted(path.name for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)


def test_the_deployment_probes_drains_and_reads_its_secrets(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod = k8s["Deployment", "keel"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    # preStop outlasts keel's own drain, and the grace period covers preStop, the drain and uvicorn's wait
    sleep, seconds = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    keel_drain = DRAIN_TIMEOUT + GRACEFUL_SHUTDOWN
    assert int(seconds) > keel_drain
    assert pod["terminationGracePeriodSeconds"] > int(seconds) + keel_drain
    secrets = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in container["env"]}
    assert secrets.keys() == {"DATABASE_URL", "REDIS_URL", "KEEL_JWT_SECRET", "KEEL_SMTP_URL"}
    assert {ref["name"] for ref in secrets.values()} == {"keel"}
    [config] = container["envFrom"]
    assert ("ConfigMap", config["configMapRef"]["name"]) in k8s
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_pieces_point_at_each_other(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = k8s["Deployment", "keel"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [port] = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    service = k8s["Service", "keel"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert k8s["PodDisruptionBudget", "keel"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s["HorizontalPodAutoscaler", "keel"]["spec"]["scaleTargetRef"]["name"] == "keel"
    ingresses = [resource for (kind, _), resource in k8s.items() if kind == "Ingress"]
    backends = [
        path["backend"]["service"]
        for ingress in ingresses
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert {(b["name"], b["port"]["name"]) for b in backends} == {("keel", "http"), ("keel-realtime", "http")}
    realtime = k8s["Ingress", "keel-realtime"]
    paths = {
        path["path"]: path["backend"]["service"]["name"]
        for rule in realtime["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert paths == {"/ws": "keel-realtime", "/events": "keel-realtime"}
    annotations = realtime["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_http_pods_run_granian_and_realtime_pods_uvicorn(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    http, realtime = (k8s["Deployment", name]["spec"]["template"] for name in ("keel", "keel-realtime"))
    [http_container], [realtime_container] = http["spec"]["containers"], realtime["spec"]["containers"]
    assert http_container["args"] == ["serve", "--server", "granian"]
    assert realtime_container["args"] == ["serve", "--server", "uvicorn"]
    # the same image, settings, probes and drain; only the server differs
    assert {**realtime_container, "args": None} == {**http_container, "args": None}
    assert realtime["spec"]["terminationGracePeriodSeconds"] == http["spec"]["terminationGracePeriodSeconds"]
    # neither Service sends traffic to the other pool
    selector = k8s["Service", "keel-realtime"]["spec"]["selector"]
    assert selector.items() <= realtime["metadata"]["labels"].items()
    assert not k8s["Service", "keel"]["spec"]["selector"].items() <= realtime["metadata"]["labels"].items()
    assert not selector.items() <= http["metadata"]["labels"].items()


def test_the_migration_job_runs_the_deployments_image(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    [migrate] = k8s["Job", "keel-migrate"]["spec"]["template"]["spec"]["containers"]
    [serve] = k8s["Deployment", "keel"]["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == serve["image"]
    labels = k8s["Job", "keel-migrate"]["spec"]["template"]["metadata"]["labels"]
    assert not k8s["Service", "keel"]["spec"]["selector"].items() <= labels.items()  # never sent traffic
