"""The deploy/ files: Prometheus rules and their unit tests, the Grafana dashboard, the
Kubernetes manifests, docker-compose and the Dockerfile, checked against cfn's metric contract.

promtool is required (Debian's `prometheus` package, which .ci/run installs): without it these
tests fail, they do not skip.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.parse
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cfn.cloudflare.settings import CloudflareSettings
from cfn.ingest.auth import SecretIndex
from cfn.ingest.settings import IngestSettings
from cfn.processors.settings import WorkerSettings
from tests.promql_exprs import (
    ALERT_RULES,
    DEPLOY,
    RECORDING_RULES,
    ROOT,
    alert_rules,
    all_promql_exprs,
    dashboard_exprs,
    iter_panels,
    label_names,
    load_dashboard,
    load_rule_groups,
    metric_names,
    recording_rules,
)

PROMETHEUS = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
PROMTOOL_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "k8s" / "base"
K8S_MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

# The Kubernetes version the manifests are validated against (kubernetes-validate, strict).
K8S_VERSION = "1.32.0"

# cfn's metric contract: name -> label names. Histograms are listed without suffix.
COUNTERS: dict[str, frozenset[str]] = {
    "cfn_ingest_requests_total": frozenset({"code"}),
    "cfn_ingest_auth_failures_total": frozenset({"reason"}),
    "cfn_ingest_kafka_errors_total": frozenset({"kind", "cause"}),
    "cfn_ingest_dead_letters_total": frozenset({"reason"}),
    "cfn_notifications_total": frozenset({"alert_type", "event"}),
    "cfn_duplicates_total": frozenset({"alert_type"}),
    "cfn_dlq_total": frozenset({"reason"}),
    "cfn_incidents_closed_total": frozenset({"alert_type", "close_reason"}),
    "cfn_unknown_alert_types_total": frozenset(),
    "cfn_rates_dropped_late_total": frozenset({"window"}),
    "cfn_worker_task_failures_total": frozenset({"error"}),
    "cfn_raw_records_skipped_total": frozenset({"partition"}),
    "cfn_anomalies_total": frozenset({"alert_type"}),
    "cfn_ingest_tenant_requests_total": frozenset({"tenant", "code"}),
    "cfn_ingest_tenant_throttled_total": frozenset({"tenant", "reason"}),
}
GAUGES: dict[str, frozenset[str]] = {
    "cfn_ingest_requests_in_flight": frozenset(),
    "cfn_dlq_ratio": frozenset(),
    "cfn_dlq_alarm": frozenset(),
    "cfn_incidents_open": frozenset({"alert_type"}),
    "cfn_alert_rate_per_minute": frozenset({"alert_type", "window"}),
    "cfn_anomalies_open": frozenset({"alert_type"}),
    "cfn_flapping": frozenset({"alert_type"}),
    "cfn_ingest_tenant_in_flight": frozenset({"tenant"}),
    "cfn_ingest_tenant_max_inflight": frozenset({"tenant"}),
    "cfn_ingest_tenant_guaranteed_inflight": frozenset({"tenant"}),
    "cfn_consumer_lag_records": frozenset({"topic"}),
    "cfn_worker_partitions": frozenset(),
    "cfn_kafka_up": frozenset(),
    "cfn_build_info": frozenset({"version"}),
    # `cfn reconcile --every` (job cfn-reconcile).
    "cfn_cloudflare_destination_last_success_timestamp_seconds": frozenset({"tenant"}),
    "cfn_cloudflare_destination_last_failure_timestamp_seconds": frozenset({"tenant"}),
}
HISTOGRAMS: dict[str, frozenset[str]] = {
    "cfn_ingest_request_duration_seconds": frozenset(),
    "cfn_ingest_kafka_ack_duration_seconds": frozenset(),
    "cfn_ingest_body_bytes": frozenset(),
    "cfn_incident_duration_seconds": frozenset({"alert_type"}),
    "cfn_delivery_delay_seconds": frozenset(),
    "cfn_processing_lag_seconds": frozenset(),
    "cfn_worker_commit_duration_seconds": frozenset(),
    "cfn_worker_restore_duration_seconds": frozenset(),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series Prometheus itself writes for every target; only alerts use it (target down).
PROMETHEUS_SERIES = frozenset({"up"})
# Labels added by Prometheus (target, histogram, recording rule quantile) next to cfn's own.
EXTRA_LABELS = frozenset({"job", "instance", "le", "quantile"})

INGEST_PORT = 8080
WORKER_PORT = 9464
RECONCILE_PORT = 9465


def contract_series() -> set[str]:
    names = set(COUNTERS) | set(GAUGES)
    names |= {base + suffix for base in HISTOGRAMS for suffix in HISTOGRAM_SUFFIXES}
    return names


def known_labels() -> set[str]:
    labels: set[str] = set(EXTRA_LABELS)
    for table in (COUNTERS, GAUGES, HISTOGRAMS):
        for names in table.values():
            labels |= names
    return labels


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# ---------------------------------------------------------------------------- promtool


@cache
def _promtool() -> str | None:
    return shutil.which("promtool")


@pytest.fixture
def promtool() -> str:
    path = _promtool()
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install Debian's `prometheus` package "
            "(apt-get install prometheus), as .ci/run does; the deploy checks need it"
        )
    return path


def run_promtool(promtool: str, *args: str | Path, cwd: Path = ROOT) -> str:
    proc = subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def test_promtool_check_config(promtool: str) -> None:
    out = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert "SUCCESS" in out


def test_promtool_check_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", RECORDING_RULES, ALERT_RULES)
    assert out.count("SUCCESS") == 2


def test_promtool_unit_tests(promtool: str) -> None:
    assert PROMTOOL_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    out = run_promtool(promtool, "test", "rules", *PROMTOOL_TESTS)
    assert out.count("SUCCESS") == len(PROMTOOL_TESTS)


def test_dashboard_exprs_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each dashboard query (variables replaced) as a recording rule."""
    exprs = dashboard_exprs(substitute=True)
    rules = [{"record": f"cfn_dashboard_check_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)


# ---------------------------------------------------------------------------- rules


def _promtool_test_cases() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in PROMTOOL_TESTS:
        for group in load_yaml(path)["tests"]:
            yield path.name, group


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for _, group in _promtool_test_cases():
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {name for name, _ in alert_rules()}
    assert alerts, "alerts.yml has no alert"
    assert alerts - firing == set(), "alerts without a firing test case"
    assert alerts - quiet == set(), "alerts without a not-firing test case"
    assert (firing | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_every_recording_rule_is_unit_tested() -> None:
    queried: set[str] = set()
    for _, group in _promtool_test_cases():
        for case in group.get("promql_expr_test", []):
            queried |= metric_names(case["expr"])
    records = {name for name, _ in recording_rules()}
    assert records - queried == set(), "recording rules no promql_expr_test queries"


def test_required_alerts_exist() -> None:
    alerts = dict(alert_rules())
    required = {
        "ingest 5xx": "cfn_ingest_requests_total",
        "kafka ack latency": "cfn_ingest_kafka_ack_duration_seconds_bucket",
        "dlq alarm": "cfn_dlq_alarm",
        "dlq rising": "cfn_dlq_total",
        "consumer lag": "cfn_consumer_lag_records",
        "incidents open": "cfn_incidents_open",
        "alert type spike": "cfn_notifications_total",
        "rate anomaly": "cfn_anomalies_open",
        "cloudflare delivery": "cfn_cloudflare_destination_last_failure_timestamp_seconds",
    }
    for topic, metric in required.items():
        using = [name for name, expr in alerts.items() if metric in expanded_names(expr)]
        assert using, f"no alert on {topic} (reading {metric})"
    spike = [e for e in alerts.values() if "cfn_notifications_total" in expanded_names(e)]
    assert any("offset" in e for e in spike), "the spike alert compares with a past baseline"


def test_alerts_carry_severity_and_runbook() -> None:
    for group in load_rule_groups(ALERT_RULES):
        for rule in group["rules"]:
            name = rule["alert"]
            assert re.fullmatch(r"Cfn[A-Z][A-Za-z0-9]+", name), name
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
            notes = rule["annotations"]
            assert set(notes) >= {"summary", "description", "runbook"}, name
            assert "\n" not in notes["summary"].strip(), f"{name}: summary is one line"
            runbook = notes["runbook"]
            assert "Check" in runbook and "Do:" in runbook, f"{name}: runbook says what to do"
            assert len(runbook) > 200, f"{name}: runbook is inline text, not a link"


def test_recording_rule_names_follow_the_convention() -> None:
    for record, _ in recording_rules():
        assert re.fullmatch(r"cfn:[a-z0-9_]+:[a-z0-9_]+", record), record


# ---------------------------------------------------------------------------- metric names


@cache
def _recording_sources() -> dict[str, set[str]]:
    sources: dict[str, set[str]] = {}
    for record, expr in recording_rules():
        sources.setdefault(record, set()).update(metric_names(expr))
    return sources


def expanded_names(expr: str) -> set[str]:
    """Metric names read by expr, with recording rules replaced by what they read."""
    sources = _recording_sources()
    seen: set[str] = set()
    todo = list(metric_names(expr))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(sources.get(name, ()))
    return seen


def _check_names(where: str, expr: str, allowed: set[str]) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric name found in {expr!r}"
    unknown = names - allowed
    assert not unknown, f"{where}: {sorted(unknown)} not in cfn's metric contract: {expr!r}"
    labels = label_names(expr)
    assert labels <= known_labels(), f"{where}: unknown labels {sorted(labels - known_labels())}"


def test_dashboard_metric_names_are_in_the_contract() -> None:
    allowed = contract_series() | set(_recording_sources())
    for expr in dashboard_exprs(substitute=False):
        _check_names("dashboard", expr, allowed)


def test_rule_metric_names_are_in_the_contract() -> None:
    records = set(_recording_sources())
    for record, expr in recording_rules():
        _check_names(f"record {record}", expr, contract_series() | records)
    for alert, expr in alert_rules():
        _check_names(f"alert {alert}", expr, contract_series() | records | PROMETHEUS_SERIES)


def test_every_contract_metric_is_used() -> None:
    used: set[str] = set()
    for expr in [*dashboard_exprs(), *(e for _, e in recording_rules() + alert_rules())]:
        used |= metric_names(expr)
    for name in [*COUNTERS, *GAUGES]:
        assert name in used, f"{name} is on no panel and in no rule"
    for base in HISTOGRAMS:
        assert any(base + s in used for s in HISTOGRAM_SUFFIXES), f"{base} is unused"


def test_metric_name_parser() -> None:
    expr = (
        'sum by (alert_type, le) (rate(cfn_x_bucket{code=~"5..", a="b{c}"}[5m] offset 1h))'
        " / on () group_left cfn:y:rate5m > bool 1e3 and absent(up{job='x'}) or vector(0)"
    )
    assert metric_names(expr) == {"cfn_x_bucket", "cfn:y:rate5m", "up"}
    assert label_names(expr) == {"alert_type", "le", "code", "a", "job"}


def test_all_promql_exprs() -> None:
    exprs = all_promql_exprs()
    assert len(exprs) == len(set(exprs))
    assert not [e for e in exprs if "$" in e or "[[" in e], "Grafana variables left"
    for record, expr in recording_rules():
        assert record in exprs
        assert " ".join(expr.split()) in exprs
    assert {" ".join(e.split()) for e in dashboard_exprs()} <= set(exprs)


# ---------------------------------------------------------------------------- grafana


def test_dashboard_imports_as_is() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "cfn-overview"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert "__inputs" not in dashboard, "export-for-sharing placeholders do not provision"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"

    panels = list(iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        title = panel.get("title", "?")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, title
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{title}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
            assert target.get("expr", "").strip(), f"{title}: empty expr"
        used_vars = set(re.findall(r"\$(\w+)", title))
        assert used_vars <= set(variables), f"{title}: unknown variable"


def test_dashboard_covers_the_required_views() -> None:
    exprs = dashboard_exprs(substitute=False)
    read = [expanded_names(e) for e in exprs]

    def panel_reads(metric: str) -> bool:
        return any(metric in names for names in read)

    for metric in (
        "cfn_ingest_requests_total",
        "cfn_ingest_request_duration_seconds_bucket",
        "cfn_notifications_total",
        "cfn_incidents_open",
        "cfn_incident_duration_seconds_bucket",
        "cfn_duplicates_total",
        "cfn_dlq_total",
        "cfn_delivery_delay_seconds_bucket",
        "cfn_consumer_lag_records",
        "cfn_anomalies_open",
        "cfn_flapping",
        "cfn_cloudflare_destination_last_success_timestamp_seconds",
        "cfn_cloudflare_destination_last_failure_timestamp_seconds",
    ):
        assert panel_reads(metric), f"no panel shows {metric}"
    assert any('code="202"' in e or "accepted" in e for e in exprs), "accepted vs rejected"
    assert any("topk(" in e and "cfn:notifications" in e for e in exprs), "top alert types"


def test_grafana_provisioning_matches_compose() -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert ds["jsonData"]["timeInterval"] == scrape

    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "cfn.yml")["providers"]
    paths = {p["options"]["path"] for p in providers}
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] in paths
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ---------------------------------------------------------------------------- prometheus


def test_prometheus_scrapes_ingest_and_worker() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job, service, port in (("cfn-ingest", "ingest", 8081), ("cfn-worker", "worker", 9464)):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port
        assert service in load_yaml(COMPOSE)["services"]
    assert [PROMETHEUS / f for f in config["rule_files"]] == [RECORDING_RULES, ALERT_RULES]
    alert_jobs = set()
    for _, expr in alert_rules():
        alert_jobs |= set(re.findall(r'job(?:=~?)"([^"]+)"', expr))
    for pattern in alert_jobs:
        assert all(re.fullmatch(pattern, j) for j in pattern.split("|")), pattern
        assert set(pattern.split("|")) <= set(jobs), f"alerts name unknown job {pattern}"


# ---------------------------------------------------------------------------- kubernetes


def test_k8s_manifests_exist() -> None:
    assert K8S_MANIFESTS, "no manifests in deploy/k8s"


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
def test_k8s_manifest_validates(path: Path) -> None:
    docs = load_yaml_all(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {where}: {exc}")


@cache
def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in K8S_MANIFESTS:
        for doc in load_yaml_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def _kind(kind: str) -> list[dict[str, Any]]:
    return [doc for (k, _), doc in _k8s_objects().items() if k == kind]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S_MANIFESTS)


def test_k8s_has_the_required_objects() -> None:
    objects = _k8s_objects()
    for key in (
        ("Deployment", "cfn-ingest"),
        ("Deployment", "cfn-worker"),
        ("Deployment", "cfn-reconcile"),
        ("Service", "cfn-ingest"),
        ("ConfigMap", "cfn-config"),
        ("Secret", "cfn-ingest-secrets"),
        ("HorizontalPodAutoscaler", "cfn-ingest"),
    ):
        assert key in objects, f"missing {key}"
    assert objects[("HorizontalPodAutoscaler", "cfn-ingest")]["apiVersion"] == "autoscaling/v2"
    assert _kind("PodDisruptionBudget"), "no PodDisruptionBudget"
    worker_services = [
        s for s in _kind("Service") if s["spec"]["selector"] == _pod_labels("cfn-worker")
    ]
    assert worker_services, "no Service for the worker's metrics"


def _deployment(name: str) -> dict[str, Any]:
    return _k8s_objects()[("Deployment", name)]


def _pod_labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = _deployment(name)["spec"]["selector"]["matchLabels"]
    return labels


def _container(name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _deployment(name)["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


@pytest.mark.parametrize(
    ("name", "port", "admin"), [("cfn-ingest", 8080, 8081), ("cfn-worker", 9464, 9464)]
)
def test_k8s_deployment_probes_and_resources(name: str, port: int, admin: int) -> None:
    container = _container(name)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in ports.values()
    for probe, path, on in (
        ("livenessProbe", "/healthz", port),
        ("readinessProbe", "/readyz", admin),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == on
    annotations = _deployment(name)["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert annotations["prometheus.io/port"] == str(admin)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"
    assert container["envFrom"] == [{"configMapRef": {"name": "cfn-config"}}]
    config = _k8s_objects()[("ConfigMap", "cfn-config")]["data"]
    env_port = "CFN_INGEST_PORT" if name == "cfn-ingest" else "CFN_WORKER_METRICS_PORT"
    assert config[env_port] == str(port)
    template = _deployment(name)["spec"]["template"]
    assert template["metadata"]["labels"].items() >= _pod_labels(name).items()


def _environ(name: str, tmp_path: Path | None = None) -> dict[str, str]:
    """A Deployment's container environment: the ConfigMap under its own `env` values, with each
    path under /etc/cfn made real beneath tmp_path when given."""
    config = _k8s_objects()[("ConfigMap", "cfn-config")]["data"]
    env = {e["name"]: e["value"] for e in _container(name).get("env", [])}
    environ = {**config, **env}
    if tmp_path is not None:
        environ = {
            k: str(tmp_path / v.lstrip("/")) if v.startswith("/etc/cfn/") else v
            for k, v in environ.items()
        }
    return environ


def _secret_files(name: str) -> dict[str, tuple[str, str]]:
    """Every file a Deployment's Secret volumes put in its container: path -> (Secret, key)."""
    pod = _deployment(name)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in _container(name)["volumeMounts"]:
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        assert mount.get("readOnly") is True, f"{name}: {mount['name']} is writable"
        secret = _k8s_objects()[("Secret", source["secretName"])]
        keys = [*secret.get("stringData", {}), *secret.get("data", {})]
        items = source.get("items") or [{"key": k, "path": k} for k in keys]
        for item in items:
            assert item["key"] in keys, f"{name}: {source['secretName']} has no {item['key']}"
            files[f"{mount['mountPath']}/{item['path']}"] = (source["secretName"], item["key"])
    return files


def test_k8s_reconcile_runs_every_5m_as_one_pod_scraped_like_the_worker(tmp_path: Path) -> None:
    """`cfn reconcile --every 5m`, one replica (Recreate: never two), its /metrics where the
    scrape annotations (the worker's convention) say, the ingest's secrets file mounted the
    same way as the ingest's, its tokens beside it, and the others' security context."""
    spec = _deployment("cfn-reconcile")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = _container("cfn-reconcile")
    assert container["args"] == ["reconcile", "--every", "5m"]
    assert container["envFrom"] == [{"configMapRef": {"name": "cfn-config"}}]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": RECONCILE_PORT}
    worker_notes = _deployment("cfn-worker")["spec"]["template"]["metadata"]["annotations"]
    notes = spec["template"]["metadata"]["annotations"]
    assert set(notes) == set(worker_notes)
    assert notes == {**worker_notes, "prometheus.io/port": str(RECONCILE_PORT)}
    probe = container["livenessProbe"]["httpGet"]
    assert (ports[probe["port"]], probe["path"]) == (RECONCILE_PORT, notes["prometheus.io/path"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind

    # cfn's own settings read the pod's environment, every mounted file made real.
    files = _secret_files("cfn-reconcile")
    environ = _environ("cfn-reconcile", tmp_path)
    secrets_file = _environ("cfn-reconcile")["CFN_INGEST_SECRETS_FILE"]
    assert files[secrets_file] == ("cfn-ingest-secrets", "secrets.json")
    ingest_env = _environ("cfn-ingest")
    assert ingest_env["CFN_INGEST_SECRETS_FILE"] == secrets_file
    assert _secret_files("cfn-ingest")[secrets_file] == files[secrets_file]
    tokens = {path for path, (secret, _key) in files.items() if secret == "cfn-cloudflare-tokens"}
    assert tokens, "no Cloudflare token is mounted"
    for path in files:
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("x")
    settings = CloudflareSettings.from_env(environ)
    assert str(settings.require_secrets_file()) == environ["CFN_INGEST_SECRETS_FILE"]
    assert settings.require_secrets_file().is_file()
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", RECONCILE_PORT)
    assert settings.bootstrap == _environ("cfn-worker")["CFN_KAFKA_BOOTSTRAP"]

    def security(name: str) -> tuple[Any, Any]:
        pod = _deployment(name)["spec"]["template"]["spec"]
        return pod["securityContext"], _container(name)["securityContext"]

    assert security("cfn-reconcile") == security("cfn-worker") == security("cfn-ingest")


def test_k8s_worker_replicas_do_not_exceed_partitions() -> None:
    partitions = int(_k8s_objects()[("ConfigMap", "cfn-config")]["data"]["CFN_PARTITIONS"])
    spec = _deployment("cfn-worker")["spec"]
    assert spec["replicas"] <= partitions
    assert "CFN_PARTITIONS" in (K8S / "worker-deployment.yaml").read_text()
    for hpa in _kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == "cfn-worker":
            assert hpa["spec"]["maxReplicas"] <= partitions


def test_k8s_worker_rollout_never_runs_two_versions() -> None:
    """The upgrade rule (docs/operations.md): stop every worker, then start the new version.
    Only Recreate waits until the old pods have exited: a RollingUpdate with maxSurge 0 and
    maxUnavailable 100% starts the new pods while the old ones may still be terminating (in
    their grace period, still in the consumer group)."""
    strategy = _deployment("cfn-worker")["spec"]["strategy"]
    assert strategy == {"type": "Recreate"}


def test_k8s_ingest_secret_is_a_mounted_file() -> None:
    secret = _k8s_objects()[("Secret", "cfn-ingest-secrets")]
    text = secret.get("stringData", {}).get("secrets.json", "")
    assert "PLACEHOLDER" in text, "the committed secret holds only placeholders"
    assert "PLACEHOLDER" in (K8S / "secret.yaml").read_text().split("apiVersion")[0]
    pod = _deployment("cfn-ingest")["spec"]["template"]["spec"]
    container = _container("cfn-ingest")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    secrets_file = env["CFN_INGEST_SECRETS_FILE"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in container["volumeMounts"] if secrets_file.startswith(m["mountPath"] + "/")]
    (mount,) = mounts
    volume = volumes[mount["name"]]["secret"]
    assert volume["secretName"] == "cfn-ingest-secrets"
    relative = secrets_file[len(mount["mountPath"]) + 1 :]
    assert {"key": "secrets.json", "path": relative} in volume.get("items", [])
    assert "CFN_INGEST_SECRET" not in _k8s_objects()[("ConfigMap", "cfn-config")]["data"]


def test_k8s_services_and_hpa_point_at_the_deployments() -> None:
    ingest = _k8s_objects()[("Service", "cfn-ingest")]
    assert ingest["spec"]["selector"] == _pod_labels("cfn-ingest")
    hpa = _k8s_objects()[("HorizontalPodAutoscaler", "cfn-ingest")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "cfn-ingest",
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    for pdb in _kind("PodDisruptionBudget"):
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert labels in (_pod_labels("cfn-ingest"), _pod_labels("cfn-worker"))


# ---------------------------------------------------------------------------- compose


def _image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage: what each process in the image starts with."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    last_stage = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            for word in shlex.split(line)[1:]:
                name, _, value = word.partition("=")
                env[name] = value
    return env


def _service_environ(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment over the image's (the `<<` merge is PyYAML's)."""
    return {**_image_env(), **{k: str(v) for k, v in service["environment"].items()}}


def _healthcheck_url(service: dict[str, Any]) -> urllib.parse.SplitResult:
    (url,) = re.findall(r"urlopen\('([^']+)'", " ".join(service["healthcheck"]["test"]))
    return urllib.parse.urlsplit(str(url))


def _advertised(kafka: dict[str, Any]) -> set[str]:
    """host:port of each listener the broker advertises."""
    listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    return {listener.split("://", 1)[1] for listener in listeners}


def test_docker_compose_services_read_their_settings(tmp_path: Path) -> None:
    """cfn's own settings read each cfn service's environment (over the image's ENV): the ingest
    listens on every interface at the port compose publishes and its healthcheck asks, with the
    secrets file compose writes from CFN_INGEST_SECRETS_JSON; the worker serves metrics where
    its healthcheck and Prometheus look; both reach a listener the broker advertises, and the
    worker's partitions are the broker's default."""
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    kafka = services["kafka"]
    scrape_ports = {
        job["job_name"]: job["dns_sd_configs"][0]["port"]
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        if "dns_sd_configs" in job
    }

    ingest_service = services["ingest"]
    environ = _service_environ(ingest_service)
    (mounted,) = ingest_service["secrets"]
    assert environ["CFN_INGEST_SECRETS_FILE"] == f"/run/secrets/{mounted['target']}"
    assert compose["secrets"][mounted["source"]] == {"environment": "CFN_INGEST_SECRETS_JSON"}
    secrets_file = tmp_path / mounted["target"]
    secrets_file.write_text('{"default": ["test-webhook-secret"]}')  # CFN_INGEST_SECRETS_JSON
    ingest = IngestSettings.from_env({**environ, "CFN_INGEST_SECRETS_FILE": str(secrets_file)})
    index = SecretIndex.load(ingest.secret, ingest.secrets_file)
    assert index.tenant_for(b"test-webhook-secret") == "default"
    assert ingest.host == "0.0.0.0"
    published = [str(port).split(":")[-2:] for port in ingest_service["ports"]]
    assert published == [[str(ingest.port)] * 2, [str(ingest.admin_port)] * 2]
    assert str(ingest_service["ports"][1]).startswith("127.0.0.1:")  # admin: this machine only
    assert ingest.admin_host == "0.0.0.0"  # Prometheus, in its own container, scrapes it
    health = _healthcheck_url(ingest_service)
    assert (health.port, health.path) == (ingest.admin_port, "/readyz")
    assert scrape_ports["cfn-ingest"] == ingest.admin_port
    assert ingest.bootstrap in _advertised(kafka)

    worker_service = services["worker"]
    worker = WorkerSettings.from_env(_service_environ(worker_service))
    assert worker.metrics_host == "0.0.0.0"
    health = _healthcheck_url(worker_service)
    assert (health.port, health.path) == (worker.metrics_port, "/readyz")
    assert scrape_ports["cfn-worker"] == worker.metrics_port
    assert worker.bootstrap in _advertised(kafka)
    assert worker.partitions == int(kafka["environment"]["KAFKA_NUM_PARTITIONS"])

    reconcile_service = services["reconcile"]
    environ = _service_environ(reconcile_service)
    reconcile = CloudflareSettings.from_env(environ)
    assert reconcile_service["command"][:2] == ["reconcile", "--every"]
    assert reconcile_service["secrets"] == ingest_service["secrets"]  # the same tenants
    assert (
        str(reconcile.secrets_file) == _service_environ(ingest_service)["CFN_INGEST_SECRETS_FILE"]
    )
    assert reconcile.metrics_host == "0.0.0.0"
    assert scrape_ports["cfn-reconcile"] == reconcile.metrics_port
    assert reconcile.bootstrap in _advertised(kafka)


def test_docker_compose_structure() -> None:
    compose = load_yaml(COMPOSE)
    services: dict[str, Any] = compose["services"]
    assert {"kafka", "ingest", "worker", "prometheus", "grafana"} <= set(services)

    kafka = services["kafka"]
    match = re.fullmatch(r"apache/kafka:(\d+)\.(\d+)\.(\d+)", kafka["image"])
    assert match and (int(match[1]), int(match[2])) >= (4, 1), kafka["image"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for key in ("KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "CLUSTER_ID"):
        assert env.get(key), key
    assert len(env["CLUSTER_ID"]) == 22, "a base64 UUID"

    for name, command in (("ingest", "ingest"), ("worker", "worker")):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["command"][0] == command
        assert service["environment"]["CFN_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert "kafka" in service["depends_on"]
    assert services["ingest"]["environment"]["CFN_INGEST_SECRETS_FILE"].startswith("/run/secrets/")

    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            assert source in compose["secrets"], f"{name}: undeclared secret {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: missing {source}"
            else:
                assert source in declared_volumes, f"{name}: undeclared volume {source}"
    prometheus_mounts = [v for v in services["prometheus"]["volumes"] if v.startswith("./")]
    assert any(v.startswith("./prometheus:/etc/prometheus") for v in prometheus_mounts)


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms), froms
    assert 'ENTRYPOINT ["cfn"]' in lines
    assert 'CMD ["ingest"]' in lines
    assert re.search(r"^USER (?!root|0\b)", text, re.MULTILINE), "runs as non-root"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The cfn package and the folders its links point to (pyproject.toml, [tool.setuptools]).
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["cfn", "cfn.*"]
    links = [p.name for p in (ROOT / "cfn").iterdir() if p.is_symlink()]
    assert sorted(links) == ["cloudflare", "ingest", "processors", "schemas"], links
    needed = ["cfn", *links, "pyproject.toml"]
    needed.append(pyproject["project"]["readme"])
    needed.append("LICENSE")  # setuptools puts it in the wheel's metadata
    copied = " ".join(line for line in lines if line.startswith("COPY "))
    for item in needed:
        assert re.search(rf"(^|\s){re.escape(item)}/?(\s|$)", copied), f"{item} not copied"
    exposed = {int(p) for line in lines if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert {INGEST_PORT, WORKER_PORT, RECONCILE_PORT} <= exposed
