"""Proof that the pinned faust-streaming + aiokafka work against the real Kafka 4.x broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import faust
import pytest

from tests.kafka_util import drain, produce, run

pytestmark = pytest.mark.broker


def test_faust_agent_transforms_records_end_to_end(
    kafka: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    source = topic_factory("smoke-in", partitions=2)
    sink = topic_factory("smoke-out", partitions=2)
    app = faust.App(
        unique("smoke"),
        broker=f"kafka://{kafka}",
        store="memory://",
        web_enabled=False,
        processing_guarantee="exactly_once",
        consumer_auto_offset_reset="earliest",
        topic_replication_factor=1,
        datadir=str(tmp_path / "faust-data"),  # not the working directory
    )
    src = app.topic(source, key_serializer="raw", value_serializer="raw")
    dst = app.topic(sink, key_serializer="raw", value_serializer="raw")
    seen = app.Table("seen", default=int, partitions=2)

    @app.agent(src)
    async def upper(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            seen[event.key] += 1
            await dst.send(key=event.key, value=event.value.upper())

    items = [(f"k{i % 5}".encode(), f"hello {i}".encode()) for i in range(40)]

    async def scenario() -> None:
        await produce(kafka, source, items)
        await app.start()
        try:
            deadline = time.monotonic() + 60
            while sum(seen.values()) < len(items) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            await app.stop()

    run(scenario())
    out = run(drain(kafka, sink, expect=len(items)))
    assert sorted(r.value for r in out) == sorted(v.upper() for _, v in items)
