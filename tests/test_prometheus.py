"""The deploy files against a real Prometheus scraping a real ingest + worker under load.

Every PromQL expression of the Grafana dashboard and every recording rule (promql_exprs.py)
is run on a Prometheus that scrapes both services every second and evaluates the repo's rule
files every second, while a scripted load makes every metric family move: accepted bodies,
START/END pairs with durations, duplicates, worker and ingest dead letters, unknown types,
stale expiries, orphan ENDs, late events for the rate windows, 401s, 400s and 413s. A real
`cfn reconcile --every 1s` polls a fake Cloudflare API (tests/fake_cloudflare.py) whose
destination has failed since its last success: Cloudflare's delivery health.

A short test cannot have an hour of history: expressions that look an hour (or more) back
with `offset` would be empty for a reason that is not a bug. They must be listed in
NEEDS_HISTORY, with the reason; they are still run and must execute. Every other expression
must return data.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from cfn.cloudflare.connect import destination_name
from cfn.schemas import jsonio
from tests.fake_cloudflare import FakeCloudflare
from tests.payloads import SAVE_AND_TEST, alert, encode
from tests.promql_exprs import RULES_DIR, all_promql_exprs, metric_names
from tests.services import Process, cfn_env, free_port, request, start_ingest, start_worker

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

SECRET = "prometheus-test-secret"
AUTH = {"cf-webhook-auth": SECRET}
WEBHOOK = "/webhooks/cloudflare"

# Expressions that need more history than a test has (they read `offset 1h` or older data).
# They are queried and must execute (status "success"), but may be empty. Keep each entry
# with its reason; test_history_exceptions_are_exactly_the_offset_expressions keeps the list
# honest in both directions. all_promql_exprs() has none today: the only `offset`
# expressions of the deploy files are in alerting rules (CfnDlqRising, CfnAlertTypeSpike,
# CfnIncidentsOpenTooLong), which all_promql_exprs() does not return.
NEEDS_HISTORY: dict[str, str] = {}

# Types the load uses: START/END pairs, incidents that go stale in seconds (see the worker
# env), incidents left open, and a type the catalogue does not know.
PAIR_TYPE = "health_check_status_notification"
STALE_TYPE = "advanced_ddos_attack_l4_alert"
OPEN_TYPE = "tunnel_health_event"
UNKNOWN_TYPE = "cfn_prometheus_test_unknown_type"
DURATIONS = (30, 400, 2000, 9000)  # START-to-END seconds, spread over the histogram buckets

RAW_MAX_REQUEST = 2 * 1024 * 1024  # ingest's producer max_request_size (ingest/sink.py)

QUERY_DEADLINE = 90.0  # seconds to wait for every expression to return data
MIN_LOAD = 20.0  # seconds of load before the first verdict, so [1m] windows have samples


# ---- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """Posts one scripted round of requests a second in a thread, until stopped."""

    port: int
    rounds: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prometheus-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.round(self.rounds)
            except Exception as exc:  # reported by the test, a thread cannot fail it
                self.errors.append(f"round {self.rounds}: {type(exc).__name__}: {exc}")
            self.rounds += 1
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))

    def post(self, body: bytes, expect: int, headers: dict[str, str] | None = None) -> None:
        resp = request(self.port, "POST", WEBHOOK, body, AUTH if headers is None else headers)
        if resp.status != expect:
            self.errors.append(f"expected {expect}, got {resp.status}: {resp.body[:200]!r}")

    def round(self, n: int) -> None:
        now = int(time.time())
        tok = uuid.uuid4().hex
        account = f"acc-{tok[:12]}"

        # A START and its END: an incident opened and resolved, with a duration.
        duration = DURATIONS[n % len(DURATIONS)]
        pair = f"pair-{tok}"
        self.post(encode(alert(account=account, correlation=pair, ts=now - duration)), 202)
        end = alert(account=account, correlation=pair, event="ALERT_STATE_EVENT_END", ts=now)
        self.post(encode(end), 202)

        # The same body twice: one notification, one duplicate.
        once = encode(alert(account=account, correlation=None, alert_type=PAIR_TYPE, ts=now))
        self.post(once, 202)
        self.post(once, 202)
        self.post(SAVE_AND_TEST, 202)  # identical every round: a duplicate of type "none"

        # Dead-lettered by the worker (ts not a number) and by ingest (not a JSON object).
        self.post(encode(alert(account=account, correlation=f"dlq-{tok}", ts="bad")), 202)
        self.post(b"{not json", 400)
        self.post(b"[1, 2, 3]", 400)

        # Unknown type, an incident that goes stale in seconds, an END that never pairs.
        self.post(encode(alert(account=account, correlation=None, alert_type=UNKNOWN_TYPE)), 202)
        stale = alert(account=account, correlation=f"stale-{tok}", alert_type=STALE_TYPE, ts=now)
        self.post(encode(stale), 202)
        orphan = alert(
            account=account, correlation=f"orphan-{tok}", event="ALERT_STATE_EVENT_END", ts=now
        )
        self.post(encode(orphan), 202)
        if n % 5 == 0:  # stays open for the whole test (default stale timeout of 1h)
            opened = alert(account=account, correlation=f"open-{tok}", alert_type=OPEN_TYPE)
            self.post(encode({**opened, "ts": now}), 202)

        # Rates: an event in the 300s window that closed before now (emitted at once, inside
        # the lateness), and one far too late for the 60s and 300s windows (dropped late).
        closed_300 = now - now % 300 - 301
        self.post(encode(alert(account=account, correlation=None, ts=closed_300)), 202)
        self.post(encode(alert(account=account, correlation=None, ts=now - 5000)), 202)

        # 401 without and with a wrong secret.
        self.post(encode(alert(account=account)), 401, {})
        self.post(encode(alert(account=account)), 401, {"cf-webhook-auth": "wrong-secret"})

        # Over CFN_INGEST_MAX_BODY: 413.
        if n % 10 == 0:
            filler = "x" * (RAW_MAX_REQUEST + 256 * 1024)
            self.post(encode({"text": filler, "account_id": account, "ts": now}), 413)


# ---- Prometheus -------------------------------------------------------------------------------


def prometheus_binary() -> str:
    """The prometheus executable; a missing one FAILS the test, it never skips."""
    found = os.environ.get("CFN_PROMETHEUS") or shutil.which("prometheus")
    if not found and Path("/usr/bin/prometheus").exists():
        found = "/usr/bin/prometheus"
    if not found:
        pytest.fail(
            "the prometheus binary is not installed (apt-get install prometheus, "
            "or set CFN_PROMETHEUS to its path); these tests need a real Prometheus",
            pytrace=False,
        )
    return found


def promtool_binary() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed (it comes with Debian's prometheus package)")
    return found


def prometheus_config(ingest_port: int, worker_port: int, reconcile_port: int) -> dict[str, Any]:
    """The services under the job names the rules and the dashboard use, every second."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in sorted(RULES_DIR.glob("*.yml"))],
        "scrape_configs": [
            {
                "job_name": "cfn-ingest",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{ingest_port}"]}],
            },
            {
                "job_name": "cfn-worker",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
            },
            {
                "job_name": "cfn-reconcile",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{reconcile_port}"]}],
            },
        ],
    }


def start_prometheus(tmp: Path, ingest_port: int, worker_port: int, reconcile_port: int) -> Process:
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(ingest_port, worker_port, reconcile_port)))
    port = free_port()
    process = Process(
        [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        dict(os.environ),
        tmp / "prometheus.log",
        port=port,
    )
    process.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.proc is not None
        if process.proc.poll() is not None:
            pytest.fail(f"prometheus exited at start:\n{process.output[-3000:]}", pytrace=False)
        try:
            if request(port, "GET", "/-/ready", timeout=2).status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.stop()
    pytest.fail(f"prometheus never became ready:\n{process.output[-3000:]}", pytrace=False)


def api(port: int, path: str, **params: str) -> dict[str, Any]:
    """One Prometheus HTTP API call; errors (400/422) come back as their JSON body."""
    query = f"?{urlencode(params)}" if params else ""
    resp = request(port, "GET", f"{path}{query}")
    try:
        data: dict[str, Any] = resp.json()
    except ValueError:
        data = {"status": "error", "error": f"HTTP {resp.status}: {resp.body[:300]!r}"}
    return data


ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
CF_TOKEN = "cf-token-prometheus-test-0123456789"


def start_reconcile(tmp: Path, kafka: str, prefix: str, fake: FakeCloudflare) -> Process:
    """`cfn reconcile --every 1s` for tenant "default", whose destination in the fake account
    last succeeded an hour ago and failed a minute ago."""
    account = fake.account(ACCOUNT, CF_TOKEN, "read")
    account.webhooks["hook-1"] = {
        "id": "hook-1",
        "name": destination_name("default"),
        "url": "https://cfn.example.com/webhooks/cloudflare",
        "secret": SECRET,
        "type": "generic",
        "created_at": "2026-01-01T00:00:00Z",
        "last_success": _rfc3339(time.time() - 3600),
        "last_failure": _rfc3339(time.time() - 60),
    }
    token = tmp / "cf.token"
    token.write_text(CF_TOKEN)
    secrets = tmp / "reconcile-secrets.json"
    cloudflare = {"account_id": ACCOUNT, "api_token_file": str(token)}
    secrets.write_bytes(jsonio.dumps({"default": {"secrets": [SECRET], "cloudflare": cloudflare}}))
    port = free_port()
    env = {
        "CFN_KAFKA_BOOTSTRAP": kafka,
        "CFN_TOPIC_PREFIX": prefix,
        "CFN_INGEST_SECRETS_FILE": str(secrets),
        "CFN_CLOUDFLARE_API_BASE": fake.base,
        "CFN_RECONCILE_METRICS_PORT": str(port),
    }
    argv = [sys.executable, "-m", "cfn", "reconcile", "--every", "1s", "--since", "1h"]
    process = Process(argv, cfn_env(env), tmp / "reconcile.log", port=port)
    process.start()
    return process


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Observed:
    ingest: Process
    worker: Process
    reconcile: Process
    prometheus: Process
    load: Load

    def query(self, expr: str) -> dict[str, Any]:
        return api(self.prometheus.port, "/api/v1/query", query=expr)

    def metrics_text(self, service: str) -> str:
        ports = {
            "ingest": self.ingest.admin_port,
            "worker": self.worker.port,
            "reconcile": self.reconcile.port,
        }
        port = ports[service]
        resp = request(port, "GET", "/metrics")
        assert resp.status == 200, resp.body[:300]
        return resp.body.decode()


@pytest.fixture(scope="module")
def observed(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    prometheus_binary()  # fail before starting anything when it is missing
    tmp = tmp_path_factory.mktemp("prometheus")
    token = uuid.uuid4().hex[:8]
    prefix = f"p{token}."
    worker_env = {
        "CFN_ORPHAN_END_HOLD": "2s",
        "CFN_INCIDENT_STALE_AFTER": "3600s",
        "CFN_INCIDENT_STALE_AFTER_BY_TYPE": f"{STALE_TYPE}=3s",
        # The dashboard reads window="300s": keep the default windows, with a lateness
        # longer than the 300s window so an event of the window before now is still counted.
        "CFN_RATE_WINDOWS": "60s,300s,3600s",
        "CFN_RATE_LATENESS": "600s",
        "CFN_RATE_IDLE_AFTER": "2s",
    }
    worker = start_worker(tmp, kafka, prefix, f"app-{token}", worker_env)
    ingest: Process | None = None
    prometheus: Process | None = None
    load: Load | None = None
    fake = FakeCloudflare()
    fake.start()
    reconcile = start_reconcile(tmp, kafka, prefix, fake)
    try:
        ingest = start_ingest(
            tmp,
            kafka,
            prefix,
            {"CFN_INGEST_SECRET": SECRET},
        )
        prometheus = start_prometheus(tmp, ingest.admin_port, worker.port, reconcile.port)
        load = Load(ingest.port)
        load.start()
        yield Observed(ingest, worker, reconcile, prometheus, load)
    finally:
        if load is not None:
            load.stop()
        if prometheus is not None:
            prometheus.stop()
        if ingest is not None:
            ingest.stop()
        worker.stop()
        reconcile.stop()
        fake.stop()
        assert fake.violations == [], fake.violations
        assert CF_TOKEN not in reconcile.output


# ---- tests ------------------------------------------------------------------------------------


def test_history_exceptions_are_exactly_the_offset_expressions() -> None:
    """NEEDS_HISTORY lists every `offset` expression and nothing else, each with a reason."""
    exprs = all_promql_exprs()
    with_offset = {expr for expr in exprs if " offset " in f" {expr} "}
    assert set(NEEDS_HISTORY) == with_offset, (
        "NEEDS_HISTORY must be exactly the expressions that read `offset`: "
        f"missing {sorted(with_offset - set(NEEDS_HISTORY))}, "
        f"not needed {sorted(set(NEEDS_HISTORY) - with_offset)}"
    )
    assert all(reason.strip() for reason in NEEDS_HISTORY.values())


def test_every_target_is_up(observed: Observed) -> None:
    deadline = time.monotonic() + 30
    up: dict[str, str] = {}
    while time.monotonic() < deadline:
        data = api(observed.prometheus.port, "/api/v1/query", query="up")
        up = {r["metric"]["job"]: r["value"][1] for r in data["data"]["result"]}
        if up == {"cfn-ingest": "1", "cfn-worker": "1", "cfn-reconcile": "1"}:
            return
        time.sleep(1)
    raise AssertionError(f"up by job: {up}\n{observed.prometheus.output[-2000:]}")


def test_every_expression_returns_data(observed: Observed) -> None:
    """Each dashboard and recording-rule expression executes and, but for NEEDS_HISTORY,
    returns a non-empty result once the load has run."""
    exprs = all_promql_exprs()
    assert exprs, "promql_exprs found no expressions"
    failed: dict[str, str] = {}
    empty: list[str] = []
    deadline = time.monotonic() + max(0.0, MIN_LOAD - observed.load.elapsed) + QUERY_DEADLINE
    while True:
        if observed.load.elapsed >= MIN_LOAD:
            failed, empty = {}, []
            for expr in exprs:
                data = observed.query(expr)
                if data.get("status") != "success":
                    failed[expr] = str(data.get("error", data))
                elif not data["data"]["result"] and expr not in NEEDS_HISTORY:
                    empty.append(expr)
            if failed:
                break  # a query that does not execute will not start to with more data
            if not empty:
                break
        if time.monotonic() >= deadline:
            break
        time.sleep(2)

    assert not observed.load.errors, "the load got unexpected answers:\n" + "\n".join(
        observed.load.errors[:20]
    )
    assert not failed, "expressions Prometheus could not execute:\n" + "\n".join(
        f"  {expr}\n    -> {error}" for expr, error in failed.items()
    )
    if empty:
        exposed = {
            line.split("{")[0].split(" ")[0]
            for service in ("ingest", "worker", "reconcile")
            for line in observed.metrics_text(service).splitlines()
            if line and not line.startswith("#")
        }
        lines = []
        for expr in empty:
            names = sorted(metric_names(expr))
            missing = [n for n in names if ":" not in n and not _exposed(n, exposed)]
            unmatched = [
                selector
                for selector in selectors(expr)
                if not observed.query(f"count({selector})")["data"]["result"]
            ]
            lines.append(
                f"  {expr}\n    reads {names}; never exposed by the services: {missing}; "
                f"selectors matching no series: {unmatched}"
            )
        raise AssertionError(
            f"{len(empty)} of {len(exprs)} expressions returned no data after "
            f"{observed.load.rounds} load rounds:\n"
            + "\n".join(lines)
            + "\nA selector with a label matcher that matches no series means that label value"
            " was never created: the load does not produce it (extend Load.round), or the"
            " expression needs `or vector(0)` / the service must initialise the label value,"
            " so that a healthy stack shows 0 rather than no data."
        )


def selectors(expr: str) -> list[str]:
    """The instant-vector selectors of an expression (name plus matchers, range dropped)."""
    names = metric_names(expr)
    found = [
        match.group(0)
        for match in _SELECTOR.finditer(expr)
        if match.group(1) in names and not expr[match.end() :].lstrip().startswith("(")
    ]
    return list(dict.fromkeys(found))


_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][A-Za-z0-9_:]*)(\{[^{}]*\})?")


def _exposed(name: str, exposed: set[str]) -> bool:
    return name in exposed or any(
        f"{name}{suffix}" in exposed for suffix in ("_bucket", "_count", "_sum", "_total")
    )


def test_rules_evaluate_without_errors(observed: Observed) -> None:
    """Every loaded rule (recording and alerting) evaluates with health "ok"."""
    deadline = time.monotonic() + 20
    bad: list[str] = []
    names: set[str] = set()
    while time.monotonic() < deadline:
        groups = api(observed.prometheus.port, "/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        names = {group["name"] for group in groups}
        bad = [
            f"{rule['name']}: {rule['health']} {rule.get('lastError', '')}"
            for rule in rules
            if rule["health"] != "ok"
        ]
        if rules and not bad:
            break
        time.sleep(1)
    assert names >= {
        "cfn-ingest-recording",
        "cfn-worker-recording",
        "cfn-worker-alerts",
        "cfn-cloudflare-alerts",
    }, names
    assert not bad, "rules not evaluating cleanly:\n" + "\n".join(bad)


@pytest.mark.parametrize("service", ["ingest", "worker", "reconcile"])
def test_metrics_exposition_passes_promtool(observed: Observed, service: str) -> None:
    """`promtool check metrics` finds no problem in any service's /metrics."""
    wait_for(lambda: observed.load.rounds >= 3, 30, "three load rounds")
    text = observed.metrics_text(service)
    result = subprocess.run(
        [promtool_binary(), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    report = (result.stdout + result.stderr).decode(errors="replace").strip()
    assert result.returncode == 0 and not report, f"promtool on {service}:\n{report}"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
