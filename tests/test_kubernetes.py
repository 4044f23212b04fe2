"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas (kubernetes-validate
ships them; nothing is downloaded), the kustomizations only name files that exist and the overlay
only patches resources the base has, and every env var the manifests set is a real setting.

With `kubectl` on PATH (its built-in kustomize), the base and the GPU overlay are also rendered and
every rendered resource is validated; without it those two tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
GPU = KUBERNETES / "overlays" / "gpu"
KUBERNETES_VERSION = "1.32"  # schemas of the oldest Kubernetes we support (HPA autoscaling/v2)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization(folder: Path) -> dict[str, Any]:
    (doc,) = documents(folder / "kustomization.yaml")
    assert doc["kind"] == "Kustomization"
    return doc


def resource_files(folder: Path) -> list[Path]:
    """The files a kustomization lists as resources (folders are other kustomizations)."""
    return [folder / name for name in kustomization(folder)["resources"] if name.endswith(".yaml")]


def all_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for folder in (BASE, GPU)
        for path in resource_files(folder)
        for doc in documents(path)
    ]


def validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def kind_and_name(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def settings_variables() -> set[str]:
    from flipwatch.service.core.settings import Settings

    return {f"FLIPWATCH_{name.upper()}" for name in Settings.model_fields}


def test_every_manifest_file_is_listed_by_a_kustomization() -> None:
    listed = {p for folder in (BASE, GPU) for p in resource_files(folder)}
    patches = {GPU / p["path"] for p in kustomization(GPU)["patches"]}
    on_disk = {p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == listed | patches
    assert kustomization(GPU)["resources"][0] == "../../base"


@pytest.mark.parametrize("path", sorted({p for p, _ in all_resources()}), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        validate(doc)


def test_overlay_patches_reference_resources_of_the_base_and_are_valid_when_applied() -> None:
    base = {kind_and_name(doc): doc for path in resource_files(BASE) for doc in documents(path)}
    for patch in kustomization(GPU)["patches"]:
        (doc,) = documents(GPU / patch["path"])
        assert kind_and_name(doc) in base, f"{patch['path']} patches nothing in the base"


def test_base_has_what_a_deployment_needs() -> None:
    kinds = {kind_and_name(doc) for path in resource_files(BASE) for doc in documents(path)}
    assert {
        ("Deployment", "flipwatch-api"),
        ("HorizontalPodAutoscaler", "flipwatch-api"),
        ("Service", "flipwatch-api"),
        ("Deployment", "flipwatch-worker-cpu"),
        ("Job", "flipwatch-migrate"),
        ("ConfigMap", "flipwatch-config"),
        ("ConfigMap", "flipwatch-prometheus"),
        ("Secret", "flipwatch-secrets"),
    } <= kinds


def test_api_probes_are_healthz_and_readyz() -> None:
    (api,) = documents(BASE / "api-deployment.yaml")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_gpu_workers_request_a_gpu_and_consume_the_gpu_queues() -> None:
    (worker,) = documents(GPU / "worker-gpu-deployment.yaml")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FLIPWATCH_WORKER_QUEUES"] == "estimates.gpu,calibrations"
    assert env["FLIPWATCH_DEVICE"] == "cuda"
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


def test_secrets_are_placeholders() -> None:
    (secret,) = documents(BASE / "secret.yaml")
    assert "REPLACE-ME" in secret["stringData"]["FLIPWATCH_DATABASE_URL"]
    assert "data" not in secret


def test_every_env_var_the_manifests_set_is_a_real_setting() -> None:
    known = settings_variables()
    names: list[str] = []
    for path in [
        *(p for p, _ in all_resources()),
        *(GPU / p["path"] for p in kustomization(GPU)["patches"]),
    ]:
        for doc in documents(path):
            if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"].startswith(
                "flipwatch-"
            ):
                if doc["metadata"]["name"] != "flipwatch-prometheus":
                    names += [*doc.get("data", {}), *doc.get("stringData", {})]
            template = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in template.get("containers", []):
                names += [e["name"] for e in container.get("env", [])]
    assert names and "FLIPWATCH_WORKER_QUEUES" in names
    assert sorted(n for n in set(names) if n not in known) == []


# --- rendered with kustomize (kubectl's built-in) -------------------------------------------------


def rendered(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the files are validated one by one above")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("folder", [BASE, GPU], ids=["base", "gpu"])
def test_rendered_kustomization_is_valid(folder: Path) -> None:
    resources = rendered(folder)
    for doc in resources:
        validate(doc)
    images = {
        c["image"]
        for doc in resources
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    }
    assert images == {"flipwatch:0.1.0"}


def test_rendered_gpu_overlay_routes_estimates_to_gpu_workers() -> None:
    resources = {kind_and_name(doc): doc for doc in rendered(GPU)}
    assert (
        resources[("ConfigMap", "flipwatch-config")]["data"]["FLIPWATCH_ESTIMATE_DEVICE"] == "gpu"
    )
    (cpu,) = resources[("Deployment", "flipwatch-worker-cpu")]["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e["value"] for e in cpu["env"]}
    assert env["FLIPWATCH_WORKER_QUEUES"] == "estimates.cpu"
    assert env["FLIPWATCH_DEVICE"] == "cpu"  # the patch merged into the list, kept the rest
    (gpu,) = resources[("Deployment", "flipwatch-worker-gpu")]["spec"]["template"]["spec"][
        "containers"
    ]
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("folder", [BASE, GPU], ids=["base", "gpu"])
def test_every_pod_gets_settings_that_parse(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The values too: each flipwatch container's environment (ConfigMap, Secret placeholders,
    its own env) builds a Settings, as the process would at start-up."""
    from flipwatch.service.core.settings import Settings

    resources = rendered(folder)
    shared: dict[str, str] = {}
    for doc in resources:
        if (
            doc["kind"] in ("ConfigMap", "Secret")
            and doc["metadata"]["name"] != "flipwatch-prometheus"
        ):
            shared |= {
                k: str(v) for k, v in {**doc.get("data", {}), **doc.get("stringData", {})}.items()
            }
    containers = [
        c
        for doc in resources
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    ]
    assert containers
    for container in containers:
        for name in list(os.environ):
            if name.startswith("FLIPWATCH_"):
                monkeypatch.delenv(name)
        own = {e["name"]: e["value"] for e in container.get("env", [])}
        for name, value in (shared | own).items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert settings.environment == "prod" and settings.redis_url is not None
