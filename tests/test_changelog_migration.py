"""An upgrade over the per-table changelogs of an earlier version: their state moves, once, into
the app's one shared changelog, and is then never read again."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from cfn.config import TABLES, changelog_topic, legacy_changelog_topic, topic_names
from cfn.partition import partition_for
from cfn.processors.engine import MIGRATED_KEY
from cfn.processors.settings import WorkerSettings
from cfn.processors.worker import build
from cfn.schemas import jsonio
from cfn.topics import ensure_topics
from tests.kafka_util import read_to_end, run, wait_caught_up
from tests.payloads import alert, encode
from tests.services import Process, request, start_worker

pytestmark = pytest.mark.broker

PARTITIONS = 2
KEY = b"acc-upgrade"


async def produce_at(bootstrap: str, records: list[tuple[str, int, bytes, bytes | None]]) -> None:
    """(topic, partition, key, value) each, acknowledged by all replicas."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, partition, key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def run_worker(kafka: str, tmp: Path, prefix: str, app_id: str, mode: str, count: int) -> Process:
    """Start a worker, wait until it has processed `count` records and committed them, stop it."""
    env = {"CFN_TRANSACTIONS": mode, "CFN_LOG_LEVEL": "INFO"}
    worker = start_worker(tmp, kafka, prefix, app_id, env, partitions=PARTITIONS)
    try:
        deadline = time.monotonic() + 60
        while int(request(worker.port, "GET", "/readyz", timeout=2).json()["processed"]) < count:
            assert time.monotonic() < deadline, f"the worker did not process {count} records"
            time.sleep(0.2)
        run(wait_caught_up(kafka, app_id, f"{prefix}raw", timeout=60))
    finally:
        worker.stop()
    assert "Traceback" not in worker.output
    return worker


def values(bootstrap: str, topic: str, correlation: str) -> list[dict[str, object]]:
    records = [jsonio.loads(r.value) for r in run(read_to_end(bootstrap, topic))]
    return [r for r in records if r.get("correlation_id") == correlation]


@pytest.mark.parametrize("mode", ["partition", "worker"])
def test_an_upgrade_moves_the_per_table_changelogs_into_the_shared_one(
    kafka: str, tmp_path: Path, mode: str
) -> None:
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"up{token}.", f"up-{token}"
    raw = f"{prefix}raw"
    p = partition_for(KEY, PARTITIONS)
    incident, one_off = uuid.uuid4().hex, uuid.uuid4().hex
    start = encode(alert(correlation=incident, ts=1_700_000_000))
    end = encode(alert(correlation=incident, event="ALERT_STATE_EVENT_END", ts=1_700_000_420))
    other = encode(alert(correlation=one_off, alert_type="bgp_hijack_notification"))

    # What a worker of the earlier version did with `start` and `other`: its tables' state,
    # each table in its own changelog, keyed by the bare key.
    old = build(
        WorkerSettings(app_id=app_id, topic_prefix=prefix, partitions=PARTITIONS),
        CollectorRegistry(),
    )
    for offset, body in enumerate([start, other]):
        old.pipeline.on_raw(body, KEY, {}, p, offset, int(time.time() * 1000))
    legacy = {
        name: [(k.encode(), None if v is None else table.encode(v)) for k, v in table.drain(p)]
        for name, table in old.tables.items()
    }
    assert legacy["dedup"] and legacy["incidents"], "the earlier worker had state to move"
    roles = list(topic_names(prefix).items())
    roles += [("changelog", legacy_changelog_topic(app_id, table)) for table in TABLES]
    run(ensure_topics(kafka, roles, PARTITIONS, 1))
    run(
        produce_at(
            kafka,
            [
                (legacy_changelog_topic(app_id, name), p, key, value)
                for name, records in legacy.items()
                for key, value in records
            ],
        )
    )

    # The stream goes on after the upgrade: `other` delivered again, and the END of `start`.
    run(produce_at(kafka, [(raw, p, KEY, other), (raw, p, KEY, end)]))
    worker = run_worker(kafka, tmp_path, prefix, app_id, mode, 2)
    # The END found its START in the moved state, and the redelivery its dedup id.
    [resolved] = values(kafka, f"{prefix}incidents", incident)
    assert (resolved["state"], resolved["version"], resolved["duration_s"]) == ("resolved", 2, 420)
    assert values(kafka, f"{prefix}events", one_off) == [], "a redelivery emitted again"
    shared = run(read_to_end(kafka, changelog_topic(app_id)))
    assert {r.partition for r in shared if r.key == MIGRATED_KEY} == set(range(PARTITIONS))
    moved = {r.key for r in shared if r.partition == p}
    for name, records in legacy.items():
        for key, _value in records:
            assert f"{name}:".encode() + key in moved, f"{name} {key!r} not moved"
    assert f"partition {p} migrated to {changelog_topic(app_id)}" in worker.output

    # From now on the shared changelog is the state: deleting the dedup ids from the old
    # changelog changes nothing, and `other` delivered once more is still a duplicate.
    run(
        produce_at(
            kafka,
            [(legacy_changelog_topic(app_id, "dedup"), p, k, None) for k, _ in legacy["dedup"]],
        )
    )
    run(produce_at(kafka, [(raw, p, KEY, other)]))
    again = run_worker(kafka, tmp_path, prefix, app_id, mode, 1)
    assert values(kafka, f"{prefix}events", one_off) == [], "the old changelog was read again"
    assert "records of the per-table changelogs" not in again.output
