"""Records read back from a real broker match the contract: each record's value, key and
headers validate against the schemas schemas/asyncapi.yaml names for its channel."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cfn.cloudflare.match import Outcome
from cfn.cloudflare.reconcile import TenantResult, write_backfill
from cfn.cloudflare.records import HistoryRecord
from cfn.cloudflare.settings import CloudflareSettings
from tests.contract import Channel, channels
from tests.kafka_util import read_to_end, run, wait_caught_up
from tests.payloads import alert, encode
from tests.services import request, start_ingest, start_worker

pytestmark = pytest.mark.broker

SECRET = "contract-test-secret"
AUTH = {"cf-webhook-auth": SECRET}


def _post(port: int, body: bytes, status: int = 202) -> None:
    response = request(port, "POST", "/webhooks/cloudflare", body, AUTH)
    assert response.status == status, response.body


def _flap_marked(value: bytes | None) -> bool:
    return value is not None and json.loads(value).get("flap_id") is not None


def _conforming(channel: Channel, records: list[Any]) -> list[dict[str, Any] | None]:
    """Validate each record's key and headers, and each non-null value, against the channel's
    schemas; return the decoded values (None for a tombstone)."""
    values: list[dict[str, Any] | None] = []
    headers_validator = channel.headers_validator()
    for record in records:
        where = f"{channel.address} {record.partition}:{record.offset}"
        assert record.key is not None, f"{where}: no key"
        channel.key_validator().validate(record.key.decode())
        headers = {name: value.decode() for name, value in record.headers}
        if headers_validator is None:
            assert headers == {}, f"{where}: headers the contract does not name: {headers}"
        else:
            headers_validator.validate(headers)
        if record.value is None:
            values.append(None)
            continue
        value = json.loads(record.value)
        channel.value_validator().validate(value)
        values.append(value)
    return values


def test_records_on_the_broker_match_the_schemas_the_contract_names(
    kafka: str, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"ct{token}.", f"ct-{token}"
    env = {
        "CFN_RATE_WINDOWS": "10s,20s",
        "CFN_RATE_LATENESS": "10s",
        "CFN_RATE_IDLE_AFTER": "3600s",
        "CFN_INCIDENT_STATE_RETENTION": "2s",  # tombstones may appear too; both must conform
    }
    worker = start_worker(tmp_path, kafka, prefix, app_id, env)
    ingest = start_ingest(tmp_path, kafka, prefix, {"CFN_INGEST_SECRET": SECRET})
    try:
        base = (int(time.time()) // 20) * 20 - 200  # old and 20s-aligned: rate windows close
        starts = [encode(alert(correlation=f"c{i}-{token}", ts=base + 1 + 5 * i)) for i in range(4)]
        ends = [
            encode(
                alert(
                    correlation=f"c{i}-{token}",
                    event="ALERT_STATE_EVENT_END",
                    ts=base + 25 + 10 * i,
                )
            )
            for i in range(3)
        ]  # three START/END pairs and one incident left open
        for body in [*starts, starts[0], *ends]:  # starts[0] twice: a duplicate
            _post(ingest.port, body)
        _post(ingest.port, encode(alert(correlation=f"bad-{token}", ts="yesterday")))
        _post(ingest.port, b"[1, 2, 3]", status=400)  # not an object: dead-lettered by ingest
        # A notification backfilled from Cloudflare's history, as `cfn reconcile --backfill`
        # writes it: the record and its copies on the three other partitions.
        sent = datetime.fromtimestamp(base, UTC)
        missed = HistoryRecord(
            f"h-{token}", "origin down", "health_check_status_notification", "", "hook",
            "webhook", "Origin health", "pol-1", sent,
        )  # fmt: skip
        settings = CloudflareSettings(bootstrap=kafka, topic_prefix=prefix)
        result = TenantResult("default", outcome=Outcome(missed=[missed]))
        assert run(write_backfill(settings, "default", "acc-1", result)) == 1
        for source in ("raw", "rate-input"):  # then every output of them is committed
            run(wait_caught_up(kafka, app_id, prefix + source, timeout=90))
        deadline = time.monotonic() + 60  # and the 2 s retention of the 3 resolved ones passes
        while sum(r.value is None for r in run(read_to_end(kafka, prefix + "incident-state"))) < 3:
            assert time.monotonic() < deadline, "no tombstones after the retention"
            time.sleep(0.5)
        # Four incidents of one account, policy and type opened within the hour: a flap episode
        # (CFN_FLAP_MIN_CYCLES 4), whose marks give each of them one more version.
        while sum(_flap_marked(r.value) for r in run(read_to_end(kafka, prefix + "incidents"))) < 4:
            assert time.monotonic() < deadline, "the flap episode's marks never came back"
            time.sleep(0.5)
    finally:
        ingest.stop()
        worker.stop()
    assert "Traceback" not in worker.output, worker.output[-3000:]

    read: dict[str, list[dict[str, Any] | None]] = {}
    for role, channel in channels().items():
        topic = prefix + role
        assert channel.address == f"cfn.{role}"  # the document's addresses use the default prefix
        read[role] = _conforming(channel, run(read_to_end(kafka, topic)))

    # 4 starts, the duplicate, 3 ends, the bad ts, a backfill and its 3 copies
    assert len(read["raw"]) == 13
    # The duplicate is not an event, the bad ts a dead letter, the copies make none.
    events = [e for e in read["events"] if e is not None]
    assert len(events) == 8
    assert sorted(e["origin"] for e in events) == ["history"] + ["webhook"] * 7
    unmarked = [i for i in read["incidents"] if i is not None and i["flap_id"] is None]
    marked = [i for i in read["incidents"] if i is not None and i["flap_id"] is not None]
    assert sorted(i["state"] for i in unmarked) == ["open"] * 4 + ["resolved"] * 3
    assert len(marked) == 4 and len({i["incident_id"] for i in marked}) == 4
    (episode,) = [f for f in read["flaps"] if f is not None]
    assert episode["state"] == "start" and episode["cycles"] == 4
    assert {i["flap_id"] for i in marked} == {episode["flap_id"]}
    assert read["rates"], "closed windows"
    dead = [d for d in read["dlq"] if d is not None]
    assert sorted((d["stage"], d["reason"]) for d in dead) == [
        ("ingest", "not_an_object"),
        ("worker", "bad_ts"),
    ]
    # cfn.incident-state mirrors every incident version byte for byte; with the 2 s retention,
    # resolved incidents may already have their tombstones, open ones never.
    table = run(read_to_end(kafka, prefix + "incident-state"))
    history = run(read_to_end(kafka, prefix + "incidents"))
    assert sorted(r.value for r in table if r.value is not None) == sorted(r.value for r in history)
    for record in table:
        if record.value is not None:
            assert record.key.decode() == json.loads(record.value)["incident_id"]
    resolved = {i["incident_id"] for i in unmarked if i["state"] != "open"}
    assert sorted(r.key.decode() for r in table if r.value is None) == sorted(resolved)
