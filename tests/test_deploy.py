"""Static checks of the deployment assets (deploy/, docker-compose*.yml, Dockerfile).

Every PromQL expression in the Grafana dashboard, the Grafana alert rule and the Prometheus rules
must name only metrics that flipwatch exports (EXPORTED_METRICS) or Prometheus's own `up`, so a
renamed metric breaks this test instead of silently emptying a panel or muting an alert.
promtool and docker-compose checks live in deploy/check.sh (they need the tools installed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flipwatch.service.metrics.names import EXPORTED_METRICS

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flipwatch.json"
GRAFANA_ALERTING = DEPLOY / "grafana" / "provisioning" / "alerting" / "flipwatch.yml"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "flipwatch.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROM_RULES = DEPLOY / "prometheus" / "rules" / "flipwatch.yml"
PROM_TESTS = DEPLOY / "prometheus" / "tests" / "flipwatch_test.yml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"

DATASOURCE_UID = "flipwatch-prometheus"

# EXPORTED_METRICS, the metric families flipwatch exports (API and worker processes), is the
# service's own list (service/metrics.py), so the assets are checked against what the code exports.
# Series Prometheus itself writes for every scrape target.
PROMETHEUS_METRICS = frozenset({"up"})
# The series a histogram or counter family exposes besides its own name.
SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")

PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
     "group_right", "inf", "nan", "start", "end"}
)  # fmt: skip


def is_known_series(name: str, extra: frozenset[str] = frozenset()) -> bool:
    if name in EXPORTED_METRICS or name in PROMETHEUS_METRICS or name in extra:
        return True
    return any(
        name.endswith(suffix) and name[: -len(suffix)] in EXPORTED_METRICS
        for suffix in SERIES_SUFFIXES
    )


def _strip_promql(expr: str) -> str:
    """The expression without string literals, label matchers, ranges, grouping clauses and
    Grafana variables: what is left names metrics, functions, keywords and numbers."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    return e


def flipwatch_names(expr: str) -> set[str]:
    """Identifiers that start with flipwatch_ (outside string literals)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![\w:])flipwatch_\w*", e))


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (identifiers not called as functions)."""
    e = _strip_promql(expr)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", e)
    return {n for n in names if n.lower() not in PROMQL_KEYWORDS}


def unknown_metrics(expr: str, extra: frozenset[str] = frozenset()) -> set[str]:
    names = flipwatch_names(expr) | metric_names(expr)
    return {n for n in names if not is_known_series(n, extra)}


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- the helpers themselves ---------------------------------------------------------------------


def test_promql_parsing_finds_metric_names_only():
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(flipwatch_http_request_duration_seconds_"
        'bucket{route=~"$route", method="atc_ne"}[$__rate_interval]))) / ignoring(method) '
        'flipwatch_jobs offset 5m and time() - up{job="flipwatch-worker"} > 3 * 3600'
    )
    assert metric_names(expr) == {
        "flipwatch_http_request_duration_seconds_bucket",
        "flipwatch_jobs",
        "up",
    }
    assert unknown_metrics(expr) == set()
    assert unknown_metrics("flipwatch_estimated_acuracy_ratio < 0.8") == {
        "flipwatch_estimated_acuracy_ratio"
    }
    assert unknown_metrics("rate(node_cpu_seconds_total[5m])") == {"node_cpu_seconds_total"}
    assert unknown_metrics("flipwatch_jobs_bucket") == set()  # suffixes are not type-checked


# --- Grafana dashboard --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def test_dashboard_is_a_grafana_11_model(dashboard):
    assert dashboard["uid"] == "flipwatch"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_panels_do_not_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_panel_uses_the_flipwatch_datasource(dashboard):
    for panel in all_panels(dashboard):
        assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, panel["title"]
        assert panel["datasource"].get("type") == "prometheus", panel["title"]
        for target in panel.get("targets", []):
            if "datasource" in target:
                assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    exprs = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            exprs.append((f"annotation {annotation['name']}", annotation["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(SELECTOR, LABEL): the selector is PromQL, the label is not a metric.
            match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
            assert match, f"variable {var['name']}: expected label_values(...), got {query!r}"
            exprs.append((f"variable {var['name']}", match.group(1)))
    return exprs


def test_every_dashboard_query_names_exported_metrics_only(dashboard):
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 10
    for where, expr in exprs:
        assert expr.strip(), where
        assert not unknown_metrics(expr), f"{where}: unknown metrics in {expr!r}"


def test_every_non_row_panel_has_a_query(dashboard):
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]
            for target in panel["targets"]:
                assert target.get("refId") and target.get("expr"), panel["title"]


def test_dashboard_has_a_stream_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    stream = variables["stream"]
    assert stream["type"] == "query"
    assert stream["datasource"]["uid"] == DATASOURCE_UID
    query = stream["query"]["query"] if isinstance(stream["query"], dict) else stream["query"]
    assert re.fullmatch(r"label_values\(\s*flipwatch_\w+\s*,\s*stream\s*\)", query)
    # The per-stream panels filter by it.
    uses = [e for _, e in dashboard_exprs(dashboard) if "$stream" in e]
    assert len(uses) >= 6


def test_dashboard_covers_the_story(dashboard):
    """Accuracy and baselines, the latest value with thresholds, WF, embeddings, alert states,
    ingest rate, the job queue, estimate duration percentiles."""
    panels = [p for p in all_panels(dashboard) if p["type"] != "row"]

    def panels_with(pattern: str, kind: str | None = None) -> list[dict]:
        return [
            p
            for p in panels
            if (kind is None or p["type"] == kind)
            and any(re.search(pattern, t["expr"]) for t in p["targets"])
        ]

    accuracy_over_time = panels_with(r"flipwatch_estimated_accuracy_ratio", "timeseries")
    assert any(panels_with(r"flipwatch_baseline_accuracy_ratio", "timeseries"))
    assert any(
        any("flipwatch_baseline_accuracy_ratio" in t["expr"] for t in p["targets"])
        for p in accuracy_over_time
    ), "baselines next to the estimate"

    (stat,) = panels_with(r"flipwatch_estimated_accuracy_ratio", "stat")
    steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps][1:] == sorted(s["value"] for s in steps[1:])
    assert 0.8 in [s["value"] for s in steps], "the alert floor shows in the stat's colours"

    assert panels_with(r"flipwatch_weighted_flips")
    assert panels_with(r"flipwatch_embedding_distance")
    assert panels_with(r"flipwatch_drift_alert", "state-timeline")
    assert panels_with(r"rate\(\s*flipwatch_images_ingested_total")
    assert panels_with(r"flipwatch_jobs\b")
    assert panels_with(r"histogram_quantile\([^,]+,.*flipwatch_estimate_duration_seconds_bucket")


def test_grafana_alert_links_to_an_existing_panel(dashboard):
    rule = load_yaml(GRAFANA_ALERTING)["groups"][0]["rules"][0]
    annotations = rule.get("annotations", {})
    if "__panelId__" in annotations:
        assert annotations["__dashboardUid__"] == dashboard["uid"]
        panel = {str(p["id"]): p for p in all_panels(dashboard)}[str(annotations["__panelId__"])]
        assert any("flipwatch_estimated_accuracy_ratio" in t["expr"] for t in panel["targets"])


# --- Grafana provisioning -----------------------------------------------------------------------


def test_grafana_datasource_is_provisioned_with_the_uid():
    config = load_yaml(GRAFANA_DATASOURCE)
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_grafana_alert_rule_on_estimated_accuracy():
    config = load_yaml(GRAFANA_ALERTING)
    assert config["apiVersion"] == 1
    rules = [rule for group in config["groups"] for rule in group["rules"]]
    assert rules
    for group in config["groups"]:
        assert group["name"] and group["folder"] and group["interval"]
    for rule in rules:
        assert rule["uid"] and rule["title"]
        by_ref = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in by_ref
        queries = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
        expressions = [d["model"] for d in rule["data"] if d["datasourceUid"] == "__expr__"]
        assert queries and all(q["datasourceUid"] == DATASOURCE_UID for q in queries)
        for q in queries:
            assert not unknown_metrics(q["model"]["expr"]), q["model"]["expr"]
        assert any("flipwatch_estimated_accuracy_ratio" in q["model"]["expr"] for q in queries)
        types = {e["type"] for e in expressions}
        assert {"reduce", "threshold"} <= types
        for e in expressions:
            assert e["expression"] in by_ref, f"{e['refId']} reads a missing refId"
        (threshold,) = [e for e in expressions if e["type"] == "threshold"]
        assert threshold["refId"] == rule["condition"]
        (condition,) = threshold["conditions"]
        assert condition["evaluator"] == {"type": "lt", "params": [0.8]}


def test_grafana_dashboard_provider_points_where_compose_mounts_the_dashboards():
    (provider,) = load_yaml(GRAFANA_DASHBOARD_PROVIDER)["providers"]
    assert provider["type"] == "file"
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(
        (v.split(":")[1], v.split(":")[0]) for v in grafana["volumes"] if v.startswith("./")
    )
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


# --- Prometheus ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prom_rules() -> list[dict]:
    return [rule for group in load_yaml(PROM_RULES)["groups"] for rule in group["rules"]]


def test_prometheus_rules_name_exported_metrics_only(prom_rules):
    recorded = frozenset(r["record"] for r in prom_rules if "record" in r)
    for name in recorded:
        assert re.fullmatch(r"flipwatch:\w+(:\w+)*", name), name  # level:metric:operations
    for rule in prom_rules:
        expr = rule["expr"]
        assert not unknown_metrics(expr, recorded), f"{rule}: unknown metrics in {expr!r}"
        assert flipwatch_names(expr) or "up" in metric_names(expr)


def test_prometheus_alerts_are_the_agreed_ones(prom_rules):
    alerts = {r["alert"]: r for r in prom_rules if "alert" in r}
    assert set(alerts) >= {
        "FlipwatchEstimatedAccuracyLow",
        "FlipwatchDriftAlertFiring",
        "FlipwatchNoRecentEstimate",
        "FlipwatchWorkerDown",
        "FlipwatchAccuracyUpperBoundLow",
    }
    upper = alerts["FlipwatchAccuracyUpperBoundLow"]
    assert "flipwatch_estimated_accuracy_upper_ratio < 0.8" in upper["expr"]
    low = alerts["FlipwatchEstimatedAccuracyLow"]
    assert "flipwatch_estimated_accuracy_ratio < 0.8" in low["expr"]
    assert low["for"] == "15m"
    assert alerts["FlipwatchNoRecentEstimate"]["for"] == "10m"
    assert alerts["FlipwatchWorkerDown"]["for"] == "5m"
    assert 'absent(up{job="flipwatch-worker"})' in alerts["FlipwatchWorkerDown"]["expr"]
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_has_firing_and_quiet_unit_tests(prom_rules):
    cases: dict[str, set[bool]] = {}
    for test in load_yaml(PROM_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    for rule in prom_rules:
        if "alert" in rule:
            assert cases.get(rule["alert"]) == {True, False}, rule["alert"]


def test_prometheus_scrapes_api_and_worker(prom_rules):
    config = load_yaml(PROM_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_targets = [t for sc in jobs["flipwatch-api"]["static_configs"] for t in sc["targets"]]
    assert api_targets == ["api:9100"]  # FLIPWATCH_METRICS_PORT in compose
    # Every replica of `worker` (docker compose up --scale worker=N) is found by DNS.
    (workers,) = jobs["flipwatch-worker"]["dns_sd_configs"]
    assert (workers["names"], workers["type"], workers["port"]) == (["worker"], "A", 9191)
    assert "rules/*.yml" in config["rule_files"]


# --- compose ------------------------------------------------------------------------------------


def test_compose_services():
    services = load_yaml(COMPOSE)["services"]
    expected = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"}
    expected |= {"prometheus", "grafana"}
    assert expected <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    worker = services["worker"]
    assert worker["command"][:1] == ["worker"] and "9191" in worker["command"]
    assert worker["environment"]["FLIPWATCH_DEVICE"] == "cuda"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # API and worker share the bucket, not a volume; the worker keeps its weights cache.
    assert "volumes" not in services["api"]
    assert worker["volumes"] == ["flipwatch-cache:/data"]
    assert services["api"]["environment"]["FLIPWATCH_STORAGE_BACKEND"] == "s3"


def test_compose_cpu_override_replaces_the_gpu_worker():
    base = load_yaml(COMPOSE)["services"]
    override = load_yaml(COMPOSE_CPU)["services"]
    assert override["worker"]["profiles"] == ["gpu"]
    cpu = override["worker-cpu"]
    assert "deploy" not in cpu and "profiles" not in cpu
    assert cpu["environment"]["FLIPWATCH_DEVICE"] == "cpu"
    assert "worker" in cpu["networks"]["default"]["aliases"]
    # worker-cpu repeats the GPU worker's settings (anchors do not cross files): keep them in step.
    gpu = base["worker"]
    for key in ("image", "command", "volumes", "depends_on", "healthcheck"):
        assert cpu[key] == gpu[key], key
    assert {k: v for k, v in cpu["environment"].items() if k != "FLIPWATCH_DEVICE"} == {
        k: v for k, v in gpu["environment"].items() if k != "FLIPWATCH_DEVICE"
    }


def test_dashboard_shows_what_produced_the_estimate_and_realized_accuracy(dashboard):
    exprs = " ".join(e for _, e in dashboard_exprs(dashboard))
    for name in (
        "flipwatch_estimate_signal_value",
        "flipwatch_calibration_error_ratio",
        "flipwatch_estimate_used_fraction_ratio",
        "flipwatch_realized_accuracy_ratio",
        "flipwatch_estimator_abs_error_ratio",
    ):
        assert name in exprs, name


def test_estimator_drift_alert_suggests_recalibration(prom_rules):
    (rule,) = [r for r in prom_rules if r.get("alert") == "FlipwatchEstimatorDriftedFromRealized"]
    assert "flipwatch_estimator_abs_error_ratio > 0.05" in rule["expr"]
    assert "flipwatch_realized_windows >= 3" in rule["expr"]
    assert "recalibrate" in rule["annotations"]["summary"]
    assert "recalibrate" in rule["annotations"]["description"]
