"""Exactly once downstream through a worker SIGKILL, and two workers sharing the partitions."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from cfn.config import changelog_topic
from cfn.processors.engine import WORKER_TXN_TIMEOUT_MS
from tests.kafka_util import (
    create_topics,
    drain,
    fold_table,
    fold_versions,
    partitions_of,
    produce_with_headers,
    read_to_end,
    run,
    wait_caught_up,
)
from tests.records_check import checked
from tests.services import Process, metric_value, request, start_worker, wait_worker
from tests.workload import build

pytestmark = pytest.mark.broker

PARTITIONS = 12
FAST_FAILOVER = {"CFN_SESSION_TIMEOUT": "6s"}
# How aiokafka reports a transactional producer whose epoch a newer owner has bumped, and (one
# producer per worker) the group refusing the offsets of a member from an older generation.
FENCED = {"ProducerFenced", "IllegalOperation", "InvalidProducerEpoch"}
FENCED |= {"IllegalGenerationError", "UnknownMemberIdError"}
# Every promise here holds with either owner of the transactions (CFN_TRANSACTIONS).
modes = pytest.mark.parametrize("mode", ["partition", "worker"])


def failover(mode: str) -> dict[str, str]:
    return {**FAST_FAILOVER, "CFN_TRANSACTIONS": mode, "CFN_LOG_LEVEL": "INFO"}


def processed(worker: Process) -> int:
    try:
        body: dict[str, Any] = request(worker.port, "GET", "/readyz", timeout=2).json()
    except OSError:
        return 0
    return int(body.get("processed", 0))


def feed_until_processed(
    kafka: str,
    topic: str,
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    worker: Process,
    count: int,
    chunk: int = 300,
    backlog: int = 900,
) -> tuple[int, int]:
    """Produce `records` in order while `worker` runs, never more than `backlog` ahead of what
    it has processed, until it has processed at least `count` (2 minutes at most). Returns
    (records sent, records processed). Whatever happens next (a kill, a stall) then lands with
    records in flight and the rest of the stream still to come, on a fast machine or a slow
    one: `count + backlog + chunk` must stay below len(records), which is asserted."""
    assert count + backlog + chunk < len(records), "too few records to stop mid-stream"
    sent, deadline = 0, time.monotonic() + 120
    while (done := processed(worker)) < count:
        assert time.monotonic() < deadline, "the worker made no progress"
        if sent - done < backlog:
            sent += run(produce_with_headers(kafka, topic, records[sent : sent + chunk]))
        else:
            time.sleep(0.02)
    return sent, done


def read_all(
    kafka: str, app_id: str, prefix: str, role: str, expect: int, timeout: float
) -> list[dict[str, Any]]:
    """Committed records of an output topic, once at least `expect` are there (or at the
    timeout): then, with the worker group's offsets committed to the end of the raw topic, the
    topic is read to its end offsets, so a duplicate of anything processed cannot be missed."""
    deadline = time.monotonic() + timeout
    topic = f"{prefix}{role}"
    while time.monotonic() < deadline:
        raw = run(drain(kafka, topic, settle=1.5, timeout=120))
        if len(raw) >= expect:
            break
        time.sleep(1.0)
    run(
        wait_caught_up(
            kafka, app_id, f"{prefix}raw", timeout=max(30.0, deadline - time.monotonic())
        )
    )
    return checked(role, [r.value for r in run(read_to_end(kafka, topic))])


def assert_exactly_once(
    events: list[dict[str, Any]],
    incidents: list[dict[str, Any]],
    expected_ids: set[str],
    pairs: int,
) -> None:
    ids = Counter(e["event_id"] for e in events)
    duplicated = [i for i, n in ids.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} event_ids appear more than once"
    versions = Counter((i["incident_id"], i["version"]) for i in incidents)
    assert not [v for v, n in versions.items() if n > 1], "duplicate (incident_id, version)"
    resolved = [i for i in incidents if i["state"] == "resolved"]
    assert all(i["duration_s"] is not None and i["duration_s"] >= 30 for i in resolved)
    missing = expected_ids - set(ids)
    assert not missing, f"{len(missing)} of {len(expected_ids)} notifications lost"
    # one resolved incident per START/END pair (a flap mark may add a resolved version)
    assert len({i["incident_id"] for i in resolved}) == pairs


def assert_table_mirrors_history(kafka: str, prefix: str) -> None:
    """cfn.incident-state, read alone, gives every incident's latest version (the retention
    is the default 7 days here, so nothing is forgotten): no version is written twice, and
    each key is its incident_id, on the partition of its incident's cfn.incidents records."""
    table = run(read_to_end(kafka, f"{prefix}incident-state"))
    history_records = run(read_to_end(kafka, f"{prefix}incidents"))
    history = fold_versions(history_records)
    home = {orjson.loads(r.value)["incident_id"]: r.partition for r in history_records}
    versions = Counter((r.key, orjson.loads(r.value)["version"]) for r in table if r.value)
    assert not [v for v, n in versions.items() if n > 1], "an incident version written twice"
    for record in table:
        assert record.value is not None, "a tombstone within the retention"
        assert orjson.loads(record.value)["incident_id"].encode() == record.key
        assert record.partition == home[record.key.decode()], "not on its incident's partition"
    assert fold_table(table) == history
    opened = {i for i, incident in history.items() if incident["state"] == "open"}
    print(f"cfn.incident-state: {len(history)} incidents, {len(opened)} open, as in the history")


@modes
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    kafka: str, tmp_path: Path, mode: str
) -> None:
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"k{token}.", f"kill-{token}"
    work = build(n_incidents=1500, n_one_offs=1500, now_ms=int(time.time() * 1000))
    total = len(work.records)
    run(create_topics(kafka, [f"{prefix}raw"], PARTITIONS))

    worker = start_worker(tmp_path, kafka, prefix, app_id, failover(mode), partitions=PARTITIONS)
    sent, done_before_kill = feed_until_processed(
        kafka, f"{prefix}raw", work.records, worker, total // 5
    )
    worker.kill()
    sent += run(produce_with_headers(kafka, f"{prefix}raw", work.records[sent:]))
    assert sent == total

    killed_at = time.monotonic()
    again = start_worker(tmp_path, kafka, prefix, app_id, failover(mode), partitions=PARTITIONS)
    try:
        events = read_all(kafka, app_id, prefix, "events", len(work.unique_event_ids), 240)
        recovery = time.monotonic() - killed_at
        incidents = read_all(kafka, app_id, prefix, "incidents", 2 * work.pairs, 60)
    finally:
        again.stop()
    assert_exactly_once(events, incidents, work.unique_event_ids, work.pairs)
    assert_table_mirrors_history(kafka, prefix)
    print(
        f"\nSIGKILL after {done_before_kill}/{len(work.records)} records; "
        f"all {len(work.unique_event_ids)} unique events present once, "
        f"{len(incidents)} incident versions unique; recovered in {recovery:.1f}s"
    )


@modes
def test_two_workers_split_partitions_and_state_moves(
    kafka: str, tmp_path: Path, mode: str
) -> None:
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"s{token}.", f"split-{token}"
    now_ms = int(time.time() * 1000)
    work = build(n_incidents=600, n_one_offs=0, now_ms=now_ms, seed=11)
    starts = [r for r in work.records if b"EVENT_START" in r[1]]
    ends = [r for r in work.records if b"EVENT_END" in r[1]]
    run(create_topics(kafka, [f"{prefix}raw"], PARTITIONS))

    first = start_worker(tmp_path, kafka, prefix, app_id, failover(mode), partitions=PARTITIONS)
    second: Process | None = None
    try:
        run(produce_with_headers(kafka, f"{prefix}raw", starts))
        opened = read_all(kafka, app_id, prefix, "incidents", work.pairs, 120)
        assert len({i["incident_id"] for i in opened}) == work.pairs  # all open, on one worker
        run(wait_caught_up(kafka, app_id, f"{prefix}raw"))
        assert_table_mirrors_history(kafka, prefix)  # every incident open, from the table alone

        second = start_worker(
            tmp_path, kafka, prefix, app_id, failover(mode), partitions=PARTITIONS
        )
        deadline = time.monotonic() + 60
        while request(first.port, "GET", "/readyz").status != 200:
            assert time.monotonic() < deadline, "the first worker never settled after the rebalance"
            time.sleep(0.2)
        # Settled: the partitions are split between the two, each task owned exactly once.
        deadline = time.monotonic() + 60
        while True:
            owned = [metric_value(w.port, "cfn_worker_partitions") for w in (first, second)]
            if sum(owned) == PARTITIONS and min(owned) > 0:
                break
            assert time.monotonic() < deadline, f"the group never settled: {owned}"
            time.sleep(0.2)
        before = (processed(first), processed(second))
        run(produce_with_headers(kafka, f"{prefix}raw", ends))
        incidents = read_all(kafka, app_id, prefix, "incidents", 2 * work.pairs, 120)
        after = (processed(first), processed(second))
    finally:
        first.stop()
        if second is not None:
            second.stop()
    events = checked("events", [r.value for r in run(read_to_end(kafka, f"{prefix}events"))])
    assert_exactly_once(events, incidents, work.unique_event_ids, work.pairs)
    # Both workers handled ENDs, and ENDs on moved partitions found their START's state.
    assert after[0] > before[0] and after[1] > before[1], (before, after)
    assert_table_mirrors_history(kafka, prefix)


@modes
def test_a_paused_worker_is_fenced_when_it_wakes(kafka: str, tmp_path: Path, mode: str) -> None:
    """The zombie case: a worker stalls (SIGSTOP) with transactions open, the group gives its
    partitions to another worker, and then it wakes up (SIGCONT) and carries on. Whatever it
    still tries to commit is refused: with a producer per partition, the new owner's
    init_transactions aborted its transactions and fenced it; with one per worker, the group
    refuses the offsets of its old generation (or the broker has aborted the transaction on
    its timeout). Nothing is lost or duplicated."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"z{token}.", f"zombie-{token}"
    work = build(n_incidents=1500, n_one_offs=1500, now_ms=int(time.time() * 1000), seed=5)
    run(create_topics(kafka, [f"{prefix}raw"], PARTITIONS))

    stalled = start_worker(tmp_path, kafka, prefix, app_id, failover(mode), partitions=PARTITIONS)
    other: Process | None = None
    try:
        sent, _ = feed_until_processed(
            kafka, f"{prefix}raw", work.records, stalled, len(work.records) // 8
        )
        assert stalled.proc is not None
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        other = start_worker(tmp_path, kafka, prefix, app_id, failover(mode), partitions=PARTITIONS)
        run(produce_with_headers(kafka, f"{prefix}raw", work.records[sent:]))
        time.sleep(3.0)  # the new owner is committing while the stalled one still "holds" work
        os.kill(stalled.proc.pid, signal.SIGCONT)
        events = read_all(kafka, app_id, prefix, "events", len(work.unique_event_ids), 240)
        incidents = read_all(kafka, app_id, prefix, "incidents", 2 * work.pairs, 60)
        woke_alive = stalled.proc.poll() is None
    finally:
        if stalled.proc is not None and stalled.proc.poll() is None:
            os.kill(stalled.proc.pid, signal.SIGCONT)
        stalled.stop()
        if other is not None:
            other.stop()
    assert_exactly_once(events, incidents, work.unique_event_ids, work.pairs)
    assert_table_mirrors_history(kafka, prefix)
    assert woke_alive, f"the woken worker died instead of rejoining:\n{stalled.output[-3000:]}"
    # It woke with transactions open: each was refused because it had been fenced.
    refused = re.findall(r"(?:task \d+|the worker's transaction) failed \((\w+):", stalled.output)
    print(f"\nthe woken worker had {len(refused)} task transaction(s) refused, and rejoined")
    assert refused, f"no transaction of the woken worker was refused:\n{stalled.output[-3000:]}"
    assert set(refused) <= FENCED, f"refused for other reasons than fencing: {set(refused)}"


async def freeze_in_transaction(
    kafka: str,
    worker: Process,
    topics: list[str],
    feed: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    raw: str,
    timeout: float = 120,
) -> dict[TopicPartition, int]:
    """Stop `worker` (SIGSTOP) at a random moment until it is stopped with a transaction open
    on `topics`; returns the partitions that transaction holds back, each with its high
    watermark. Between two stops the worker runs 20-80 ms. A commit it had already sent
    completes in milliseconds: a partition still behind 0.3 s after the stop is held by the
    worker. `feed` goes to `raw` a chunk at a time whenever the worker is within 600 records of
    the end of what it was given, so it is never idle (an idle worker opens no transaction),
    however fast or slow the machine."""
    committed = AIOKafkaConsumer(bootstrap_servers=kafka, isolation_level="read_committed")
    uncommitted = AIOKafkaConsumer(bootstrap_servers=kafka, isolation_level="read_uncommitted")
    await asyncio.gather(committed.start(), uncommitted.start())
    rng, sent = random.Random(7), 0
    try:
        tps = [tp for topic in topics for tp in await partitions_of(kafka, topic)]
        raw_tps = await partitions_of(kafka, raw)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            given = await uncommitted.end_offsets(raw_tps)
            if sum(given.values()) - await asyncio.to_thread(processed, worker) < 600:
                assert sent < len(feed), "the feed ran out before a stop caught a transaction"
                sent += await produce_with_headers(kafka, raw, feed[sent : sent + 1500])
            worker.signal(signal.SIGSTOP)
            await asyncio.sleep(0.3)
            stable = await committed.end_offsets(tps)
            high = await uncommitted.end_offsets(tps)
            held = {tp: high[tp] for tp in tps if stable[tp] < high[tp]}
            if held:
                return held
            worker.signal(signal.SIGCONT)
            await asyncio.sleep(rng.uniform(0.02, 0.08))
    finally:
        await asyncio.gather(committed.stop(), uncommitted.stop())
    raise AssertionError(f"no stop in {timeout:.0f}s caught the worker in an open transaction")


async def stable_past(kafka: str, marks: dict[TopicPartition, int], timeout: float) -> float:
    """When (time.monotonic()) every partition's last stable offset has reached its mark."""
    reader = AIOKafkaConsumer(bootstrap_servers=kafka, isolation_level="read_committed")
    await reader.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            stable = await reader.end_offsets(list(marks))
            if all(stable[tp] >= mark for tp, mark in marks.items()):
                return time.monotonic()
            assert time.monotonic() < deadline, f"still open after {timeout}s: {stable}"
            await asyncio.sleep(0.1)
    finally:
        await reader.stop()


def test_a_restarted_worker_aborts_the_transaction_it_left_open_at_once(
    kafka: str, tmp_path: Path
) -> None:
    """CFN_TRANSACTIONS=worker, the default, with the default 15 s session: a worker SIGKILLed
    in a transaction and started again on its machine comes back under its id (kept in
    CFN_STATE_DIR, processors/identity.py) and its producer's start aborts that transaction.
    read_committed readers of what it wrote go on well before the broker would have aborted it
    (10 s after it began, then the broker's next check) and before the group has even noticed
    the death (the session). Kafka Streams' state directory keeps its process id likewise."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"a{token}.", f"abort-{token}"
    work = build(n_incidents=4000, n_one_offs=4000, now_ms=int(time.time() * 1000), seed=5)
    run(create_topics(kafka, [f"{prefix}raw"], PARTITIONS))
    written = [f"{prefix}{role}" for role in ("events", "incidents", "rate-input")]
    written.append(changelog_topic(app_id))
    env = {"CFN_LOG_LEVEL": "INFO"}
    worker = start_worker(tmp_path, kafka, prefix, app_id, env, partitions=PARTITIONS)
    raw, backlog = f"{prefix}raw", work.records[:3000]
    run(produce_with_headers(kafka, raw, backlog))
    deadline = time.monotonic() + 60
    while processed(worker) < 500:  # busy with the backlog: a transaction a commit round
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.05)
    feed = work.records[len(backlog) :]
    left_open = run(freeze_in_transaction(kafka, worker, written, feed, raw))
    worker.kill()
    killed_at = time.monotonic()

    again = start_worker(tmp_path, kafka, prefix, app_id, env, partitions=PARTITIONS, wait=False)
    try:
        readable_at = run(stable_past(kafka, left_open, 60))
        wait_worker(again)
    finally:
        again.stop()
    first = re.findall(r"worker id (\w+) \((new|kept) in slot (\d+)", worker.output)
    restarted = re.findall(r"worker id (\w+) \((new|kept) in slot (\d+)", again.output)
    assert len(first) == 1 and first[0][1:] == ("new", "0")
    assert restarted == [(first[0][0], "kept", "0")]
    took = readable_at - killed_at
    print(f"\n{len(left_open)} partitions held by a transaction; readable {took:.1f}s after")
    assert took < WORKER_TXN_TIMEOUT_MS / 1000 - 2, "not aborted by the restart"
