"""Small async helpers the broker tests share: create topics, produce, drain a topic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, TopicPartition

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, then a moment for the connections it closed to finish closing.

    A client that failed to start (a refused producer id, say) closes its connection as it
    stops; the transport's last step is a callback the loop runs later. If the loop closes
    first, the half-closed transport is garbage-collected with a ResourceWarning, which pytest
    turns into a failure of whichever test happens to be running then.
    """

    async def settled() -> T:
        try:
            return await coro
        finally:
            await asyncio.sleep(0.02)

    return asyncio.run(settled())


async def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 1, replication: int = 1
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, partitions, replication)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def produce_with_headers(
    bootstrap: str,
    topic: str,
    items: Iterable[tuple[bytes, bytes, list[tuple[str, bytes]]]],
) -> int:
    """Produce many records fast (batched, acks=all); returns how many were acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=key, value=value, headers=headers)
            for key, value, headers in items
        ]
        await producer.flush()
        results = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(results)


def committed_reader(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A group-less consumer of `topic` from its start, committed records only (not started)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )


async def drain(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 30.0,
    settle: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the start (committed records only) until `expect` records or quiet.

    Without `expect`, it stops once no record arrived for `settle` seconds.
    """
    consumer = committed_reader(bootstrap, topic)
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got = [r for records in batch.values() for r in records]
            if got:
                out.extend(got)
                quiet_since = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - quiet_since > settle:
                break
    finally:
        await consumer.stop()
    return out


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """Every partition of `topic`, as the cluster describes it (never empty)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    assert tps, f"{topic} has no partitions"
    return sorted(tps)


async def read_to_end(bootstrap: str, topic: str, timeout: float = 120.0) -> list[Any]:
    """Every committed record of `topic` up to the end offsets taken when called.

    Done means position() has reached each partition's end offset (the last offset is often a
    transaction marker no consumer receives); records past those ends are ignored.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",  # with "latest", the assignment's own reset can win
        group_id=None,
    )
    tps = await partitions_of(bootstrap, topic)
    await consumer.start()
    out: list[Any] = []
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while pending:
            assert time.monotonic() < deadline, f"{topic}: not at the end offsets in {timeout}s"
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return out


async def wait_caught_up(bootstrap: str, group: str, topic: str, timeout: float = 180.0) -> None:
    """Block until `group` has committed `topic` to its end offsets (taken when called): every
    output of those inputs is then committed too (the worker commits them in one transaction)."""
    tps = await partitions_of(bootstrap, topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while True:
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            # A partition the group never committed is reported at -1: nothing read yet.
            at = {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in tps}
            behind = {tp: ends[tp] - at[tp] for tp in tps if at[tp] < ends[tp]}
            if not behind:
                return
            assert time.monotonic() < deadline, f"{group} still behind on {topic}: {behind}"
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await admin.close()


def fold_table(records: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """A compacted table topic's view: the last value per key, a null value deleting it."""
    table: dict[str, dict[str, Any]] = {}
    for record in records:
        key = record.key.decode()
        if record.value is None:
            table.pop(key, None)
        else:
            table[key] = orjson.loads(record.value)
    return table


def fold_versions(records: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """cfn.incidents' view: the highest version of every incident_id."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        incident = orjson.loads(record.value)
        known = latest.get(incident["incident_id"])
        if known is None or incident["version"] > known["version"]:
            latest[incident["incident_id"]] = incident
    return latest


def caught_up(bootstrap: str, group: str, names: dict[str, str], timeout: float = 120.0) -> None:
    """Block until the worker group `group` has committed everything it consumes (cfn's raw
    topic and its rate input) to the end offsets: all it will ever write for them is then
    committed, so a read_committed reader sees every output, and any duplicate."""
    for role in ("raw", "rate-input", "raw"):  # rate inputs come from raw; raw again is cheap
        run(wait_caught_up(bootstrap, group, names[role], timeout))
