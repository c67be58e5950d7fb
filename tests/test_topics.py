"""cfn's topic creation at startup, against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.topics import ensure_topics
from tests.kafka_util import produce, read_to_end, run


def test_created_topics_answer_offset_lookups_at_once(
    kafka: str, unique: Callable[[str], str]
) -> None:
    """Every topic is created in one go, and when ensure_topics returns each partition's leader
    answers ListOffsets: a consumer's first lookups meet no NotLeaderForPartition (which made
    aiokafka log an error and back off on every fresh start)."""
    names = [unique(f"t{i}") for i in range(4)]
    roles = [("changelog", names[0]), ("raw", names[1]), ("events", names[2]), ("dlq", names[3])]

    async def scenario() -> tuple[list[str], list[TopicPartition], dict[TopicPartition, int]]:
        created = await ensure_topics(kafka, roles, 24, 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            cluster = await internals.fetch_metadata(admin)
            partitions = [TopicPartition(n, p) for n in names for p in range(24)]
            leaders = {cluster.leader_for_partition(tp) for tp in partitions}
            unanswered = [
                tp
                for leader in leaders
                for tp in await internals.list_offsets_errors(admin, leader, partitions)
            ]
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, request_timeout_ms=5000)
        await consumer.start()
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(partitions), 5)
        finally:
            await consumer.stop()
        return created, unanswered, ends

    created, unanswered, ends = asyncio.run(scenario())
    assert sorted(created) == sorted(names)
    assert unanswered == []
    assert len(ends) == 4 * 24 and set(ends.values()) == {0}


def test_existing_topics_are_left_as_they_are(kafka: str, unique: Callable[[str], str]) -> None:
    """A second call creates nothing, and an existing topic keeps its own partition count."""
    old, new = unique("old"), unique("new")

    async def scenario() -> tuple[list[str], list[str], int]:
        first = await ensure_topics(kafka, [("events", old)], 3, 1)
        second = await ensure_topics(kafka, [("events", old), ("events", new)], 6, 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            cluster = await internals.fetch_metadata(admin)
        finally:
            await admin.close()
        return first, second, len(cluster.partitions_for_topic(old) or ())

    first, second, old_count = asyncio.run(scenario())
    assert first == [old]
    assert second == [new]
    assert old_count == 3


def test_incident_state_is_compacted_to_the_latest_record_of_each_incident(
    kafka: str, unique: Callable[[str], str]
) -> None:
    """cfn.incident-state as cfn creates it, with the cleaner made eager (tiny segments, no
    dirty ratio to wait for): after the cleaner has run, each incident has only its latest
    record, and an incident whose last record is a tombstone has no value left."""
    topic = unique("cfn.incident-state")

    async def scenario() -> None:
        await ensure_topics(kafka, [("incident-state", topic)], 1, 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            entries = {name: value for name, value, *_ in described[0].resources[0][4]}
            assert entries["cleanup.policy"] == "compact"  # cfn's own setting
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC,
                        topic,
                        configs={
                            "cleanup.policy": "compact",
                            "segment.ms": "100",
                            "min.cleanable.dirty.ratio": "0.001",
                            "min.compaction.lag.ms": "0",
                            "delete.retention.ms": "100",
                        },
                    )
                ]
            )
        finally:
            await admin.close()
        # Three versions of "open", two of "resolved" then a tombstone, each batch in its own
        # segment; the last record only rolls the segment before it (the active one is never
        # cleaned).
        for batch in (
            [(b"open", b"v1"), (b"resolved", b"v1")],
            [(b"open", b"v2"), (b"resolved", b"v2")],
            [(b"open", b"v3"), (b"resolved", None)],
            [(b"roll", b"x")],
        ):
            await produce(kafka, topic, batch)  # type: ignore[arg-type]
            await asyncio.sleep(0.3)
        await produce(kafka, topic, [(b"roll", b"y")])

    run(scenario())
    deadline = time.monotonic() + 90
    while True:
        records = run(read_to_end(kafka, topic))
        by_key: dict[bytes, list[bytes | None]] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record.value)
        compacted = by_key.get(b"open") == [b"v3"] and by_key.get(b"resolved", [None]) == [None]
        if compacted:
            break
        assert time.monotonic() < deadline, f"not compacted in 90 s: {by_key}"
        time.sleep(1.0)
