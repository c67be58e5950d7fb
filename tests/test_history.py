"""The worker's logic for records backfilled from Cloudflare's Notification History: their
events say `origin: "history"`, and a late original webhook after its backfill makes no second
event, on the backfill's partition or any other (over plain dicts, time from the records)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from cfn.cloudflare.match import backfill_body
from cfn.cloudflare.records import HistoryRecord
from cfn.processors.metrics import WorkerMetrics
from cfn.processors.pipeline import Output, Pipeline
from cfn.processors.settings import WorkerSettings
from cfn.schemas.history import HISTORY, HISTORY_MARK, MATCH_SLACK, ORIGIN_HEADER
from tests.payloads import alert, encode
from tests.records_check import checked

SENT = 1_790_000_000  # when Cloudflare sent the notification (the history's `sent`)
ACCOUNT = "acc-1"
TEXT = "Origin ALERT_STATE_EVENT_START for acc-1"  # alert()'s text


class Worker:
    """A pipeline over dicts, fed records of cfn.raw as the engine would."""

    def __init__(self, store: dict[str, Any] | None = None, **settings: Any) -> None:
        self.registry = CollectorRegistry()
        self.store: dict[str, Any] = {} if store is None else store
        self.pipeline = Pipeline(
            WorkerSettings(**settings),
            self.store,
            {},
            {},
            WorkerMetrics.create(self.registry),
            clock=lambda: float(SENT),
        )
        self.pipeline.rebuild(self.store.items(), (), ())
        self.offset = 0

    def raw(
        self, body: bytes, received: int, partition: int = 0, origin: bytes | None = None
    ) -> list[dict[str, Any]]:
        """One record; returns the events it made, validated against the events schema."""
        headers = {"cfn-tenant": b"acme", "cfn-received-at": b"%d" % (received * 1000)}
        if origin is not None:
            headers[ORIGIN_HEADER] = origin
        self.offset += 1
        out: list[Output] = self.pipeline.on_raw(
            body, b"k", headers, partition, self.offset, received * 1000
        )
        return checked("events", [o.value for o in out if o.role == "events" and o.value])

    def duplicates(self) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "cfn_duplicates_total":
                    total += sample.value
        return total


def history(
    sent: int = SENT, text: str = TEXT, alert_type: str = "health_check_status_notification"
) -> bytes:
    record = HistoryRecord(
        "h-1",
        text,
        alert_type,
        "",
        "hook",
        "webhook",
        "Origin health",
        "pol-1",
        datetime.fromtimestamp(sent, UTC),
    )
    return backfill_body(record, ACCOUNT)


def original(ts: int = SENT, **extra: Any) -> bytes:
    return encode(alert(account=ACCOUNT, correlation="corr-1", ts=ts, **extra))


LATER = SENT + 3600  # the backfill, past the grace period
LATEST = SENT + 7200  # the original, after its backfill


def test_a_backfill_is_an_event_from_the_history_with_what_the_history_lacks_absent() -> None:
    worker = Worker()
    (event,) = worker.raw(history(), LATER, origin=HISTORY)
    assert event["origin"] == "history"
    assert event["text"] == TEXT and event["ts"] == SENT
    assert event["correlation_id"] is None and event["event"] is None and event["data"] is None
    assert event["alert_type"] == "health_check_status_notification"
    assert event["catalog"] is not None
    (webhook,) = worker.raw(original(ts=SENT + 86400), LATER)
    assert webhook["origin"] == "webhook"


def test_a_backfill_of_an_unknown_type_flows() -> None:
    (event,) = Worker().raw(history(alert_type="cfn_test_type_nobody_knows"), LATER, origin=HISTORY)
    assert event["origin"] == "history" and event["catalog"] is None


def test_a_late_original_on_the_backfills_partition_makes_no_second_event() -> None:
    worker = Worker()
    assert len(worker.raw(history(), LATER, origin=HISTORY)) == 1
    assert worker.raw(original(), LATEST) == []
    assert worker.duplicates() == 1
    assert worker.raw(original(), LATEST + 5) == []  # Cloudflare's retry of it
    assert worker.duplicates() == 2


def test_a_late_original_on_another_partition_meets_the_backfills_copy_there() -> None:
    worker = Worker()
    assert worker.raw(history(), LATER, partition=3, origin=HISTORY_MARK) == []  # no event
    assert len(worker.raw(history(), LATER, partition=0, origin=HISTORY)) == 1
    assert worker.raw(original(), LATEST, partition=3) == []
    assert worker.duplicates() == 1


def test_without_a_copy_on_its_partition_the_original_is_an_event() -> None:
    worker = Worker()
    worker.raw(history(), LATER, partition=0, origin=HISTORY)
    assert len(worker.raw(original(), LATEST, partition=5)) == 1


def test_a_backfill_absorbs_one_original_only() -> None:
    worker = Worker()
    worker.raw(history(), LATER, origin=HISTORY)
    assert worker.raw(original(), LATEST) == []
    other = original(data={"zone_name": "example.com", "new_status": "Healthy"})
    assert len(worker.raw(other, LATEST)) == 1  # same text and time, another notification


def test_the_original_matches_within_the_slack_of_sent_and_not_twice_beyond() -> None:
    for ts in (SENT - MATCH_SLACK, SENT + MATCH_SLACK):
        worker = Worker()
        worker.raw(history(), LATER, origin=HISTORY)
        assert worker.raw(original(ts=ts), LATEST) == [], ts
    for ts in (SENT - 2 * MATCH_SLACK, SENT + 2 * MATCH_SLACK):
        worker = Worker()
        worker.raw(history(), LATER, origin=HISTORY)
        assert len(worker.raw(original(ts=ts), LATEST)) == 1, ts


def test_another_text_policy_account_or_type_is_another_notification() -> None:
    changes: list[dict[str, Any]] = [
        {"text": "Origin recovered"},
        {"policy_id": "pol-2"},
        {"account_id": "acc-2"},
        {"alert_type": "tunnel_health_event"},
    ]
    for changed in changes:
        worker = Worker()
        worker.raw(history(), LATER, origin=HISTORY)
        assert len(worker.raw(original(**changed), LATEST)) == 1, changed


def test_the_match_survives_a_restart_and_ends_with_the_dedup_window() -> None:
    store: dict[str, Any] = {}
    Worker(store).raw(history(), LATER, partition=2, origin=HISTORY_MARK)
    restarted = Worker(store)  # the changelog's table, rebuilt
    assert restarted.raw(original(), LATEST, partition=2) == []

    worker = Worker(dedup_window=3600.0)
    worker.raw(history(), LATER, origin=HISTORY)
    assert len(worker.raw(original(), LATER + 3600)) == 1


def test_a_webhook_body_with_the_history_id_field_is_no_backfill() -> None:
    """Only the header says where a record came from: the ingest never writes it."""
    worker = Worker()
    (event,) = worker.raw(history(), LATER)
    assert event["origin"] == "webhook"
    assert len(worker.raw(original(), LATEST)) == 1
