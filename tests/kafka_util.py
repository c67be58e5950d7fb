"""Small async helpers the broker tests share: create topics, produce, drain a topic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


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
