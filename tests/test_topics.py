"""cfn's topic creation at startup, against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.topics import ensure_topics


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
