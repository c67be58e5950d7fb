"""Retention deleting cfn.raw under a lagging worker: the one loss cfn cannot avoid is counted
(`cfn_raw_records_skipped_total{partition}`) and logged, never silent."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.kafka_util import produce_with_headers, run, wait_caught_up
from tests.services import metric_value, start_worker
from tests.workload import build

pytestmark = pytest.mark.broker


async def delete_before(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    """What retention does to the oldest segment: the log now starts at `offset`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(offset)}, timeout_ms=10_000)
    finally:
        await admin.close()


def test_raw_records_deleted_before_the_worker_read_them_are_counted(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    prefix, app_id = unique("rl") + ".", unique("rl")
    raw = f"{prefix}raw"
    records = build(n_incidents=0, n_one_offs=30, now_ms=int(time.time() * 1000), seed=5).records
    worker = start_worker(tmp_path, kafka, prefix, app_id, partitions=1)
    try:
        run(produce_with_headers(kafka, raw, records[:10]))
        run(wait_caught_up(kafka, app_id, raw, timeout=60))
    finally:
        worker.stop()
    # While no worker runs, 10 more arrive and the log's start moves past 5 of them.
    run(produce_with_headers(kafka, raw, records[10:20]))
    run(delete_before(kafka, TopicPartition(raw, 0), 15))
    worker = start_worker(tmp_path, kafka, prefix, app_id, partitions=1)
    try:
        run(produce_with_headers(kafka, raw, records[20:25]))
        run(wait_caught_up(kafka, app_id, raw, timeout=60))
        skipped = metric_value(worker.port, 'cfn_raw_records_skipped_total{partition="0"}')
    finally:
        worker.stop()
    assert skipped == 5, worker.output[-3000:]
    assert "offsets 10..14 deleted unread" in worker.output
