"""Safe compose defaults: every flipwatch setting reaches the containers from .env, production by
default, required secrets, healthchecks, exact image tags, Prometheus without its lifecycle API.

deploy/check.sh validates the files with docker-compose itself; the last test proves that it
fails when a password default comes back (on a scratch copy of the deployment files).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_WORKER = ROOT / "docker-compose.worker.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CHECK_SH = ROOT / "deploy" / "check.sh"

# Services that run flipwatch's image, each of which must see every setting.
FLIPWATCH_SERVICES = ("migrate", "api", "worker")
# Secrets compose requires (`${VAR:?message}`), so `up` stops when one is unset.
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_USER",
    "GRAFANA_ADMIN_PASSWORD",
    "PROMETHEUS_USER",
    "PROMETHEUS_PASSWORD",
    "PROMETHEUS_PASSWORD_BCRYPT",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "FLIPWATCH_STORAGE_ACCESS_KEY_ID",
    "FLIPWATCH_STORAGE_SECRET_ACCESS_KEY",
)
# One-shot jobs: `depends_on: condition: service_completed_successfully` is their check.
ONE_SHOT = ("migrate", "minio-init")


def settings_class() -> type:
    """The service's one Settings class, wherever the service layout keeps it."""
    for module in ("flipwatch.service.core.settings", "flipwatch.service.settings"):
        try:
            return importlib.import_module(module).Settings
        except ModuleNotFoundError:
            continue
    raise AssertionError("no Settings class in flipwatch.service(.core).settings")


def setting_variables() -> list[str]:
    settings = settings_class()
    prefix = settings.model_config["env_prefix"]
    assert prefix == "FLIPWATCH_"
    return [f"{prefix}{name}".upper() for name in settings.model_fields]


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]


def test_settings_are_found():
    names = setting_variables()
    assert "FLIPWATCH_ENVIRONMENT" in names and "FLIPWATCH_WEBHOOK_SECRET" in names
    assert len(names) >= 20


@pytest.mark.parametrize("service", FLIPWATCH_SERVICES)
def test_every_flipwatch_setting_reaches_the_service_from_compose(service):
    environment = services()[service]["environment"]
    missing = [name for name in setting_variables() if name not in environment]
    assert not missing, (
        f"{service}: add these settings to x-flipwatch-env in docker-compose.yml (and to "
        f"docker-compose.cpu.yml and .env.example): {missing}"
    )


def test_every_flipwatch_setting_reaches_the_cpu_worker():
    environment = yaml.safe_load(COMPOSE_CPU.read_text(encoding="utf-8"))["services"]["worker-cpu"][
        "environment"
    ]
    assert [n for n in setting_variables() if n not in environment] == []


def test_every_flipwatch_setting_reaches_the_worker_host_file():
    environment = yaml.safe_load(COMPOSE_WORKER.read_text(encoding="utf-8"))["services"]["worker"][
        "environment"
    ]
    assert [n for n in setting_variables() if n not in environment] == []


def test_worker_host_file_needs_the_shared_database_and_broker_and_consumes_gpu_queues():
    worker = yaml.safe_load(COMPOSE_WORKER.read_text(encoding="utf-8"))["services"]["worker"]
    environment = worker["environment"]
    assert environment["FLIPWATCH_DATABASE_URL"].startswith("${FLIPWATCH_DATABASE_URL:?set ")
    assert environment["FLIPWATCH_REDIS_URL"].startswith("${FLIPWATCH_REDIS_URL:?set ")
    assert environment["FLIPWATCH_WORKER_QUEUES"] == (
        "${FLIPWATCH_WORKER_QUEUES:-estimates.gpu,calibrations}"
    )
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


@pytest.mark.parametrize(
    ("path", "service"),
    [(COMPOSE, "worker"), (COMPOSE_CPU, "worker-cpu"), (COMPOSE_WORKER, "worker")],
)
def test_workers_scale_on_one_host(path, service):
    """`docker compose up --scale worker=N`: no fixed name, no single host port, and time to hand
    the running job back on SIGTERM (the worker stops within 30 s; Docker's default is 10 s)."""
    worker = yaml.safe_load(path.read_text(encoding="utf-8"))["services"][service]
    assert "container_name" not in worker
    for port in worker.get("ports", []):
        host_port = port.rsplit(":", 1)[0].rsplit(":", 1)[-1]
        assert "-" in host_port, f"{service}: {port} publishes one host port; use a range"
    assert worker["stop_grace_period"] == "60s"


def test_every_flipwatch_setting_is_documented_in_env_example():
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    missing = [name for name in setting_variables() if not re.search(rf"\b{name}\b", text)]
    assert missing == []


def test_passed_through_settings_keep_flipwatch_defaults_when_unset():
    """A name without a value is passed through from .env and stays unset otherwise; an empty
    string instead would override flipwatch's default (and fail to parse as a number)."""
    environment = services()["api"]["environment"]
    compose_set = {
        "FLIPWATCH_DATABASE_URL",
        "FLIPWATCH_REDIS_URL",
        "FLIPWATCH_DATA_DIR",
        "FLIPWATCH_ENVIRONMENT",
        "FLIPWATCH_DEVICE",
        "FLIPWATCH_METRICS_PORT",
        # the bundled MinIO
        "FLIPWATCH_STORAGE_BACKEND",
        "FLIPWATCH_STORAGE_BUCKET",
        "FLIPWATCH_STORAGE_ENDPOINT_URL",
        "FLIPWATCH_STORAGE_ACCESS_KEY_ID",
        "FLIPWATCH_STORAGE_SECRET_ACCESS_KEY",
    }
    for name in setting_variables():
        if name not in compose_set:
            assert environment[name] is None, f"{name} should be passed through without a value"


def test_compose_runs_production_by_default():
    for service in FLIPWATCH_SERVICES:
        assert services()[service]["environment"]["FLIPWATCH_ENVIRONMENT"] == (
            "${FLIPWATCH_ENVIRONMENT:-prod}"
        )
    assert re.search(r"^FLIPWATCH_ENVIRONMENT=prod$", ENV_EXAMPLE.read_text(), re.M)


def test_every_required_secret_stops_compose_with_a_message_when_unset():
    text = COMPOSE.read_text(encoding="utf-8")
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    for var in REQUIRED_SECRETS:
        uses = re.findall(rf"\$\{{{var}(\W[^}}]*)?\}}", text)
        assert uses, var
        assert all(use.startswith(":?set ") for use in uses), f"{var}: {uses}"
        assert re.search(rf"^{var}=", example, re.M), f"{var} missing from .env.example"
    for var in (
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "PROMETHEUS_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "FLIPWATCH_STORAGE_SECRET_ACCESS_KEY",
    ):
        assert re.search(rf"^{var}=$", example, re.M), f"{var} must be empty in .env.example"


def test_every_service_has_a_healthcheck():
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name in ONE_SHOT:  # depends_on waits for it to complete
            assert check == {"disable": True}
        else:
            assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_images_are_pinned_to_exact_versions():
    for name, service in services().items():
        image = service["image"]
        if image.startswith("${FLIPWATCH_IMAGE"):
            continue  # flipwatch's own, built from the Dockerfile
        tag = image.rsplit(":", 1)[1]
        # major.minor(.patch): PostgreSQL releases have two numbers, the others three; MinIO
        # names each release by its UTC time.
        semver = re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?", tag)
        minio = image.startswith("minio/") and re.fullmatch(
            r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag
        )
        assert semver or minio, f"{name}: {image}"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base)


def test_prometheus_has_no_lifecycle_api_and_listens_on_loopback():
    prometheus = services()["prometheus"]
    text = COMPOSE.read_text() + (ROOT / "deploy" / "prometheus" / "entrypoint.sh").read_text()
    flags = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("--web.enable-lifecycle" in line for line in flags)
    assert not any("--web.enable-admin-api" in line for line in flags)
    assert prometheus["ports"] == ["${PROMETHEUS_BIND:-127.0.0.1}:${PROMETHEUS_PORT:-9090}:9090"]
    assert "--web.config.file" in text


def test_api_metrics_are_on_an_internal_port_prometheus_scrapes():
    api = services()["api"]
    assert api["environment"]["FLIPWATCH_METRICS_PORT"] == "9100"
    assert all(not port.endswith(":9100") for port in api["ports"])
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "flipwatch-api"]
    assert job["static_configs"][0]["targets"] == ["api:9100"]


def test_grafana_needs_a_login_by_default():
    grafana = services()["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS:-false}"
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["basicAuth"] is True
    assert datasource["basicAuthUser"] == "$PROMETHEUS_USER"
    assert datasource["secureJsonData"]["basicAuthPassword"] == "$PROMETHEUS_PASSWORD"


def test_secrets_do_not_reach_the_flipwatch_containers_needlessly():
    for service in FLIPWATCH_SERVICES:
        environment = services()[service]["environment"]
        assert not {
            k for k in environment if k.startswith(("GRAFANA", "PROMETHEUS", "GF_", "MINIO"))
        }


def test_minio_holds_the_objects_and_its_bucket_is_created_before_api_and_worker_start():
    minio, init = services()["minio"], services()["minio-init"]
    assert minio["image"].startswith("minio/minio:RELEASE.")
    assert init["image"].startswith("minio/mc:RELEASE.")
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = init["command"][0]
    assert 'mc mb --ignore-existing "local/$$BUCKET"' in script
    assert "mc admin user add" in script  # flipwatch gets its own key, not the root login
    for service in ("api", "worker"):
        spec = services()[service]
        assert spec["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        environment = spec["environment"]
        assert environment["FLIPWATCH_STORAGE_BACKEND"] == "s3"
        assert environment["FLIPWATCH_STORAGE_ENDPOINT_URL"] == (
            "${FLIPWATCH_STORAGE_ENDPOINT_URL:-http://minio:9000}"
        )
    assert "volumes" not in services()["api"]  # nothing shared through a volume any more
    assert services()["worker"]["volumes"] == ["flipwatch-cache:/data"]  # its weights cache


# --- deploy/check.sh ------------------------------------------------------------------------------


def _tools_or_skip() -> str:
    hadolint = Path(sys.executable).with_name("hadolint")
    missing = [t for t in ("docker-compose", "promtool") if shutil.which(t) is None]
    if not hadolint.exists():
        missing.append(str(hadolint))
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"deploy/check.sh needs {missing} (.ci/run installs them)")
        pytest.skip(f"needs {missing}: run `bash deploy/check.sh` as root once to install them")
    return str(hadolint)


def _scratch_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in (
        "docker-compose.yml",
        "docker-compose.cpu.yml",
        "docker-compose.worker.yml",
        "Dockerfile",
        ".env.example",
    ):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "deploy", copy / "deploy")
    return copy


def _run_check(copy: Path, hadolint: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    return subprocess.run(
        ["bash", str(copy / "deploy" / "check.sh")],
        cwd=copy,
        env=env | {"HADOLINT": hadolint},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_sh_fails_when_a_password_default_is_reintroduced(tmp_path):
    hadolint = _tools_or_skip()
    copy = _scratch_copy(tmp_path)
    compose = copy / "docker-compose.yml"
    text = compose.read_text()
    required = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env (see .env.example)}"
    assert text.count(required) == 2
    compose.write_text(text.replace(required, "${POSTGRES_PASSWORD:-flipwatch}"))
    grafana = copy / "docker-compose.cpu.yml"
    grafana.write_text(grafana.read_text().replace(required, "${POSTGRES_PASSWORD:-flipwatch}"))

    result = _run_check(copy, hadolint)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: docker-compose refuses to start without POSTGRES_PASSWORD" in result.stderr
    assert "docker-compose config succeeded without POSTGRES_PASSWORD" in result.stderr
    assert "FAIL: no password defaults in" in result.stderr
    assert "docker-compose.yml:" in result.stderr and "a secret with a default" in result.stderr
    # Everything else still passes: the failure is the reintroduced default and nothing else.
    assert "ok: hadolint Dockerfile" in result.stdout
    assert "ok: docker-compose refuses to start without GRAFANA_ADMIN_PASSWORD" in result.stdout
    assert "deploy/check.sh: 2 check(s) failed" in result.stderr


def test_check_sh_fails_on_a_literal_grafana_password(tmp_path):
    hadolint = _tools_or_skip()
    copy = _scratch_copy(tmp_path)
    compose = copy / "docker-compose.yml"
    text = compose.read_text()
    line = "      GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD"
    assert line in text
    compose.write_text(
        re.sub(
            r"(?m)^      GF_SECURITY_ADMIN_PASSWORD: .*$",
            "      GF_SECURITY_ADMIN_PASSWORD: admin",
            text,
        )
    )

    result = _run_check(copy, hadolint)

    assert result.returncode == 1
    assert "a secret with a literal value:       GF_SECURITY_ADMIN_PASSWORD: admin" in (
        result.stderr
    )
