"""The ingest against the real broker: 202 only after the ack, every error path, rotation."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cfn.schemas import jsonio
from cfn.schemas.keys import incident_key
from cfn.shell.broker import LocalKafka
from tests.conftest import free_port_block
from tests.kafka_util import drain, run
from tests.payloads import SAVE_AND_TEST, alert, encode, seed_examples
from tests.services import Process, request, start_ingest

pytestmark = pytest.mark.broker

SECRET = "s3cr3t-value-never-logged"
AUTH = {"cf-webhook-auth": SECRET, "content-type": "application/json"}


@pytest.fixture
def prefix(unique: Callable[[str], str]) -> str:
    return unique("t") + "."


@pytest.fixture
def ingest(tmp_path: Path, kafka: str, prefix: str) -> Iterator[Process]:
    process = start_ingest(tmp_path, kafka, prefix, {"CFN_INGEST_SECRET": SECRET})
    try:
        yield process
    finally:
        process.stop()
        assert SECRET not in process.output


def post(process: Process, body: bytes, headers: dict[str, str] | None = None) -> int:
    return request(
        process.port, "POST", "/webhooks/cloudflare", body, AUTH if headers is None else headers
    ).status


def test_accepted_payloads_are_byte_identical_in_raw_with_key_and_headers(
    ingest: Process, kafka: str, prefix: str
) -> None:
    bodies = [*seed_examples(), SAVE_AND_TEST]
    ids = []
    for body in bodies:
        resp = request(ingest.port, "POST", "/webhooks/cloudflare", body, AUTH)
        assert resp.status == 202, resp.body
        answer = resp.json()
        assert answer["status"] == "accepted"
        ids.append(answer["id"])
    records = run(drain(kafka, f"{prefix}raw", expect=len(bodies)))
    assert len(records) == len(bodies)
    by_id = {dict(r.headers)["cfn-request-id"].decode(): r for r in records}
    for request_id, body in zip(ids, bodies, strict=True):
        record = by_id[request_id]
        headers = dict(record.headers)
        assert record.value == body  # the exact bytes, not a re-serialisation
        assert record.key == incident_key("default", jsonio.loads(body))
        assert headers["cfn-tenant"] == b"default"
        received = int(headers["cfn-received-at"])
        assert abs(received / 1000 - time.time()) < 120


def test_auth_failures_are_401_and_write_nothing(ingest: Process, kafka: str, prefix: str) -> None:
    body = encode(alert())
    missing = request(ingest.port, "POST", "/webhooks/cloudflare", body, {})
    wrong = request(ingest.port, "POST", "/webhooks/cloudflare", body, {"cf-webhook-auth": "nope"})
    assert (missing.status, wrong.status) == (401, 401)
    assert missing.json()["error"] == "unauthorized"
    assert SECRET not in wrong.body.decode()
    assert run(drain(kafka, f"{prefix}raw", settle=1.5)) == []
    metrics = request(ingest.admin_port, "GET", "/metrics").body.decode()
    assert 'cfn_ingest_auth_failures_total{reason="missing"} 1.0' in metrics
    assert 'cfn_ingest_auth_failures_total{reason="mismatch"} 1.0' in metrics
    assert SECRET not in metrics


def test_error_statuses_have_json_bodies(ingest: Process, kafka: str, prefix: str) -> None:
    too_big = request(ingest.port, "POST", "/webhooks/cloudflare", b"x" * (1024 * 1024 + 1), AUTH)
    assert too_big.status == 413 and too_big.json()["error"] == "payload_too_large"
    get = request(ingest.port, "GET", "/webhooks/cloudflare")
    assert get.status == 405 and get.headers["allow"] == "POST"
    nowhere = request(ingest.port, "GET", "/nope")
    assert nowhere.status == 404 and "message" in nowhere.json()

    bad = request(ingest.port, "POST", "/webhooks/cloudflare", b"{not json", AUTH)
    assert bad.status == 400
    assert bad.json()["error"] == "invalid_json"
    array = request(ingest.port, "POST", "/webhooks/cloudflare", b"[1, 2]", AUTH)
    assert array.status == 400 and array.json()["error"] == "not_an_object"
    dead = run(drain(kafka, f"{prefix}dlq", expect=2))
    records = sorted((jsonio.loads(r.value) for r in dead), key=lambda d: d["reason"])
    assert [d["reason"] for d in records] == ["invalid_json", "not_an_object"]
    assert base64.b64decode(records[0]["raw_b64"]) == b"{not json"
    assert records[0]["tenant"] == "default" and records[0]["stage"] == "ingest"
    assert isinstance(records[0]["received_at"], int)
    assert run(drain(kafka, f"{prefix}raw", settle=1.0)) == []


def test_secret_rotation_and_tenants_with_sighup(tmp_path: Path, kafka: str, prefix: str) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_bytes(
        jsonio.dumps(
            {
                "acme": ["old-acme-0123456789", "new-acme-0123456789"],
                "globex": ["globex-g1-0123456789"],
            }
        )
    )
    process = start_ingest(tmp_path, kafka, prefix, {"CFN_INGEST_SECRETS_FILE": str(secrets)})
    try:
        body = encode(alert())
        for secret in ("old-acme-0123456789", "new-acme-0123456789", "globex-g1-0123456789"):
            assert post(process, body, {"cf-webhook-auth": secret}) == 202
        records = run(drain(kafka, f"{prefix}raw", expect=3))
        tenants = sorted(dict(r.headers)["cfn-tenant"].decode() for r in records)
        assert tenants == ["acme", "acme", "globex"]

        secrets.write_bytes(
            jsonio.dumps({"acme": ["new-acme-0123456789"], "globex": ["globex-g1-0123456789"]})
        )
        process.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while post(process, body, {"cf-webhook-auth": "old-acme-0123456789"}) != 401:
            assert time.monotonic() < deadline, "the removed secret still works after SIGHUP"
            time.sleep(0.2)
        assert post(process, body, {"cf-webhook-auth": "new-acme-0123456789"}) == 202
    finally:
        process.stop()
    for secret in ("old-acme-0123456789", "new-acme-0123456789", "globex-g1-0123456789"):
        assert secret not in process.output


def test_no_secret_refuses_to_start_unless_explicit(tmp_path: Path, kafka: str) -> None:
    import subprocess
    import sys

    from tests.services import cfn_env

    result = subprocess.run(
        [sys.executable, "-m", "cfn", "ingest"],
        env=cfn_env({"CFN_KAFKA_BOOTSTRAP": kafka}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no webhook secret configured" in result.stderr
    process = start_ingest(tmp_path, kafka, "unauth.", {}, "--allow-unauthenticated")
    try:
        assert "WITHOUT authentication" in process.output
        assert post(process, encode(alert()), {}) == 202
    finally:
        process.stop()


def test_the_variable_allows_running_without_a_secret_as_the_flag_does(
    tmp_path: Path, kafka: str
) -> None:
    """CFN_INGEST_ALLOW_UNAUTHENTICATED=1 without --allow-unauthenticated (docs/operations.md)."""
    process = start_ingest(
        tmp_path, kafka, "unauth-env.", {"CFN_INGEST_ALLOW_UNAUTHENTICATED": "1"}
    )
    try:
        assert "WITHOUT authentication" in process.output
        assert "CFN_INGEST_ALLOW_UNAUTHENTICATED=1" in process.output
        assert post(process, encode(alert(correlation="env")), {}) == 202
    finally:
        process.stop()


def test_kafka_down_gives_503_within_ack_timeout_then_recovers(tmp_path: Path) -> None:
    broker = LocalKafka(data_dir=tmp_path / "k", port=free_port_block(1))
    broker.start()
    process = start_ingest(
        tmp_path,
        broker.bootstrap,
        "down.",
        {"CFN_INGEST_SECRET": SECRET, "CFN_INGEST_ACK_TIMEOUT": "2s"},
    )
    try:
        assert post(process, encode(alert())) == 202
        broker.stop()
        statuses = []
        for i in range(5):
            started = time.monotonic()
            resp = request(
                process.port,
                "POST",
                "/webhooks/cloudflare",
                encode(alert(correlation=f"c{i}")),
                AUTH,
            )
            elapsed = time.monotonic() - started
            statuses.append(resp.status)
            assert resp.status == 503, resp.body
            assert "retry-after" in resp.headers
            assert elapsed < 2.0 + 1.0
        assert request(process.admin_port, "GET", "/readyz").status == 503
        broker.start()
        deadline = time.monotonic() + 60
        while post(process, encode(alert(correlation="after"))) != 202:
            assert time.monotonic() < deadline, "ingest did not recover after the broker returned"
            time.sleep(0.5)
        records = run(drain(broker.bootstrap, "down.raw", settle=2.0))
        accepted = [r for r in records if b'"after"' in r.value]
        assert accepted, "the request answered 202 after recovery is not in the raw topic"
    finally:
        process.stop()
        broker.stop()
    assert SECRET not in process.output


def test_health_metrics_and_openapi(ingest: Process) -> None:
    assert request(ingest.port, "GET", "/healthz").status == 200
    assert request(ingest.admin_port, "GET", "/readyz").status == 200
    doc = request(ingest.admin_port, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert post(ingest, encode(alert())) == 202
    text = request(ingest.admin_port, "GET", "/metrics").body.decode()
    assert 'cfn_ingest_requests_total{code="202"} 1.0' in text
    assert "cfn_ingest_kafka_ack_duration_seconds_count 1.0" in text
