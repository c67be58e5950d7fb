"""The worker against the real broker: dedup, correlation, timers, DLQ, enrichment, rates."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.kafka_util import drain, read_to_end, run, wait_caught_up
from tests.payloads import SAVE_AND_TEST, SSL_NESTED, STREAM_LIVE, alert, encode
from tests.records_check import checked
from tests.services import Process, metric_value, request, start_ingest, start_worker

pytestmark = pytest.mark.broker

SECRET = "worker-test-secret"
AUTH = {"cf-webhook-auth": SECRET}
Record = dict[str, Any]


class Stack:
    """ingest + worker on one prefix; helpers to post and to read what came out."""

    def __init__(
        self, kafka: str, prefix: str, app_id: str, ingest: Process, worker: Process
    ) -> None:
        self.kafka = kafka
        self.prefix = prefix
        self.app_id = app_id
        self.ingest = ingest
        self.worker = worker

    def post(self, body: bytes) -> None:
        resp = request(self.ingest.port, "POST", "/webhooks/cloudflare", body, AUTH)
        assert resp.status == 202, resp.body

    def read(self, role: str) -> list[Record]:
        records = run(drain(self.kafka, f"{self.prefix}{role}", settle=0.5, timeout=20))
        return checked(role, [r.value for r in records])

    def wait(
        self, role: str, match: Callable[[Record], bool], expect: int, timeout: float = 30.0
    ) -> list[Record]:
        """Records of `role` matching, once there are `expect` of them: then read to the topic's
        end offsets after the worker has committed all of the raw topic, so a duplicate of
        anything it processed is there to be seen."""
        deadline = time.monotonic() + timeout
        found: list[Record] = []
        while time.monotonic() < deadline:
            found = [r for r in self.read(role) if match(r)]
            if len(found) >= expect:
                inputs = ("raw", "rate-input") if role == "rates" else ("raw",)
                for source in inputs:  # rates come from rate-input, the rest from raw
                    run(wait_caught_up(self.kafka, self.app_id, self.prefix + source, timeout=60))
                records = run(read_to_end(self.kafka, f"{self.prefix}{role}"))
                return [r for r in checked(role, [r.value for r in records]) if match(r)]
            time.sleep(0.3)
        raise AssertionError(f"{role}: wanted {expect} matching records, found {len(found)}")


@pytest.fixture(scope="module")
def stack(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    token = uuid.uuid4().hex[:8]
    prefix = f"w{token}."
    env = {
        "CFN_ORPHAN_END_HOLD": "3s",
        "CFN_INCIDENT_STALE_AFTER": "60s",
        "CFN_INCIDENT_STALE_AFTER_BY_TYPE": "stale_test_type=3s",
        "CFN_RATE_WINDOWS": "10s,20s",
        "CFN_RATE_LATENESS": "10s",
        "CFN_RATE_IDLE_AFTER": "3600s",
    }
    worker = start_worker(tmp, kafka, prefix, f"app-{token}", env)
    ingest = start_ingest(tmp, kafka, prefix, {"CFN_INGEST_SECRET": SECRET})
    try:
        yield Stack(kafka, prefix, f"app-{token}", ingest, worker)
    finally:
        ingest.stop()
        worker.stop()
        assert "Traceback" not in worker.output, worker.output[-3000:]
        assert SECRET not in worker.output + ingest.output


def corr(correlation: str) -> Callable[[Record], bool]:
    return lambda r: r.get("correlation_id") == correlation


def test_start_then_end_gives_open_and_resolved_with_duration(stack: Stack) -> None:
    c = uuid.uuid4().hex
    stack.post(encode(alert(correlation=c, ts=1_700_000_000)))
    stack.post(encode(alert(correlation=c, event="ALERT_STATE_EVENT_END", ts=1_700_000_420)))
    incidents = stack.wait("incidents", corr(c), 2)
    assert [(i["state"], i["version"]) for i in incidents] == [("open", 1), ("resolved", 2)]
    resolved = incidents[1]
    assert resolved["duration_s"] == 420 and resolved["close_reason"] == "end"
    assert resolved["incident_id"] == incidents[0]["incident_id"]
    events = stack.wait("events", corr(c), 2)
    assert {e["event"] for e in events} == {"start", "end"}
    assert resolved["first_event_id"] in {e["event_id"] for e in events}


def test_same_body_three_times_is_one_event(stack: Stack) -> None:
    c = uuid.uuid4().hex
    body = encode(alert(correlation=c, event="ALERT_STATE_EVENT_END_SOMETHING"))
    before = metric_value(
        stack.worker.port,
        'cfn_duplicates_total{alert_type="health_check_status_notification"}',
    )
    for _ in range(3):
        stack.post(body)
    events = stack.wait("events", corr(c), 1)
    assert len(events) == 1
    assert events[0]["event"] == "ALERT_STATE_EVENT_END_SOMETHING"  # kept as received
    after = metric_value(
        stack.worker.port,
        'cfn_duplicates_total{alert_type="health_check_status_notification"}',
    )
    assert after - before == 2


def test_renotify_start_bumps_count_without_a_new_incident(stack: Stack) -> None:
    c = uuid.uuid4().hex
    stack.post(encode(alert(correlation=c, ts=1_700_000_000)))
    stack.post(encode(alert(correlation=c, ts=1_700_000_300)))  # alert_interval re-send
    incidents = stack.wait("incidents", corr(c), 2)
    assert len({i["incident_id"] for i in incidents}) == 1
    assert [(i["version"], i["renotify_count"], i["state"]) for i in incidents] == [
        (1, 0, "open"),
        (2, 1, "open"),
    ]


def test_end_before_start_is_held_then_paired(stack: Stack) -> None:
    c = uuid.uuid4().hex
    stack.post(encode(alert(correlation=c, event="ALERT_STATE_EVENT_END", ts=1_700_000_600)))
    stack.post(encode(alert(correlation=c, ts=1_700_000_000)))
    incidents = stack.wait("incidents", corr(c), 2)
    assert [i["state"] for i in incidents] == ["open", "resolved"]
    assert all(i["ordering"] == "end_before_start" for i in incidents)
    assert incidents[1]["duration_s"] == 600


def test_end_without_start_becomes_orphan_after_the_hold(stack: Stack) -> None:
    c = uuid.uuid4().hex
    stack.post(encode(alert(correlation=c, event="ALERT_STATE_EVENT_END", ts=1_700_000_600)))
    incidents = stack.wait("incidents", corr(c), 1, timeout=20)
    assert len(incidents) == 1
    assert incidents[0]["state"] == "orphan_end"
    assert incidents[0]["close_reason"] == "orphan_end"


def test_stale_incident_expires_and_a_late_end_annotates_it(stack: Stack) -> None:
    c = uuid.uuid4().hex
    stack.post(encode(alert(correlation=c, alert_type="stale_test_type", ts=1_700_000_000)))
    expired = stack.wait("incidents", corr(c), 2, timeout=20)
    assert [i["state"] for i in expired] == ["open", "expired"]
    assert expired[1]["close_reason"] == "stale_timeout"
    assert expired[1]["duration_s"] is None  # kept apart from a real END
    stack.post(
        encode(
            alert(
                correlation=c,
                alert_type="stale_test_type",
                event="ALERT_STATE_EVENT_END",
                ts=1_700_000_900,
            )
        )
    )
    annotated = stack.wait("incidents", corr(c), 3)
    last = annotated[-1]
    assert (last["state"], last["late_end"], last["version"]) == ("expired", True, 3)
    assert last["close_reason"] == "stale_timeout"


def test_test_message_unknown_type_and_nested_shapes_flow_through(stack: Stack) -> None:
    account = uuid.uuid4().hex
    stack.post(SAVE_AND_TEST.replace(b"properly", account.encode()))
    stack.post(encode({**STREAM_LIVE, "account_id": account}))
    stack.post(encode({**SSL_NESTED, "account_id": account}))
    stack.post(encode(alert(account=account, alert_type="brand_new_type_xyz", correlation=None)))
    known = alert(account=account, alert_type="advanced_ddos_attack_l4_alert", correlation=None)
    stack.post(encode(known))
    events = stack.wait(
        "events",
        lambda r: r["account_id"] == account or account in (r.get("text") or ""),
        5,
    )
    by_kind = {e["kind"] for e in events}
    assert by_kind == {"test", "alert"}
    test_event = next(e for e in events if e["kind"] == "test")
    assert test_event["alert_type"] is None and test_event["catalog"] is None
    unknown = next(e for e in events if e["alert_type"] == "brand_new_type_xyz")
    assert unknown["catalog"] is None
    ddos = next(e for e in events if e["alert_type"] == "advanced_ddos_attack_l4_alert")
    assert ddos["catalog"]["title"] == "Advanced Layer 3/4 DDoS Attack Alert"
    ssl = next(e for e in events if e["alert_type"] == "universal_ssl_event_type")
    assert ssl["data"]["metadata"]["event"]["type"] == "ssl.certificate.validation.failed"
    assert ssl["ts"] == 1_700_000_100  # "1700000100" as a string
    assert metric_value(stack.worker.port, "cfn_unknown_alert_types_total") >= 1
    assert not [i for i in stack.read("incidents") if i["account_id"] == account], (
        "test messages and bodies without a correlation id never become incidents"
    )


def test_malformed_bodies_go_to_the_dlq_with_reasons(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    stack.post(encode(alert(correlation=marker, ts="yesterday")))
    stack.post(encode(alert(correlation=marker, policy_name={"nested": True})))
    dead = stack.wait("dlq", lambda r: marker.encode() in base64.b64decode(r["raw_b64"]), 2)
    assert sorted(d["reason"] for d in dead) == ["bad_field", "bad_ts"]
    for d in dead:
        assert d["stage"] == "worker" and d["tenant"] == "default"
        assert d["source"]["topic"] == f"{stack.prefix}raw"
    assert metric_value(stack.worker.port, 'cfn_dlq_total{reason="bad_ts"}') >= 1
    assert metric_value(stack.worker.port, "cfn_dlq_ratio") > 0  # read at scrape time


def test_rates_count_windows_with_a_revision_and_a_dropped_late_event(stack: Stack) -> None:
    alert_type = f"rate_type_{uuid.uuid4().hex[:8]}"
    base = (int(time.time()) // 20) * 20 - 200  # an old, 20s-aligned start
    sends = [
        base + 1,
        base + 5,
        base + 12,
        base + 25,
    ]  # windows [b,b+10) x2, [b+10,b+20), [b+20,..)
    for i, ts in enumerate(sends):
        stack.post(encode(alert(alert_type=alert_type, correlation=None, ts=ts, text=f"r{i}")))
    # The watermark is now base+25, quantised to base+20: [b, b+10) closes; its lateness ends
    # at b+20 <= watermark, so a later event for it is dropped, while [b+10, b+20) is emitted
    # at the watermark and still within lateness: an event for it yields revision 2.
    rates = stack.wait("rates", lambda r: r["alert_type"] == alert_type and r["scope"] == "type", 3)
    by_window = {(r["window_s"], r["window_start"]): r for r in rates}
    assert by_window[(10, base)]["count"] == 2
    assert by_window[(10, base + 10)]["count"] == 1
    assert by_window[(20, base)]["count"] == 3
    dropped_before = metric_value(stack.worker.port, 'cfn_rates_dropped_late_total{window="10s"}')
    stack.post(encode(alert(alert_type=alert_type, correlation=None, ts=base + 3, text="late")))
    stack.post(encode(alert(alert_type=alert_type, correlation=None, ts=base + 15, text="ok")))
    revised = stack.wait(
        "rates",
        lambda r: r["alert_type"] == alert_type and r["scope"] == "type" and r["revision"] > 1,
        3,
    )
    # "late" (base+3) is past lateness for the 10s window [b, b+10) but not for the 20s window
    # [b, b+20); "ok" (base+15) corrects both windows that hold it.
    got = sorted((r["window_s"], r["window_start"], r["revision"], r["count"]) for r in revised)
    assert got == [(10, base + 10, 2, 2), (20, base, 2, 4), (20, base, 3, 5)]
    ids = {(r["window_s"], r["window_start"]): r["rate_id"] for r in revised}
    assert ids[(10, base + 10)] == by_window[(10, base + 10)]["rate_id"]
    assert ids[(20, base)] == by_window[(20, base)]["rate_id"]
    dropped = metric_value(stack.worker.port, 'cfn_rates_dropped_late_total{window="10s"}')
    assert dropped - dropped_before == 1
