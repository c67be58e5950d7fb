"""`cfn replay`: reprocess a range of `cfn.raw` through the same pipeline, deterministically."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from cfn import internals
from cfn.partition import partition_for
from cfn.processors.metrics import WorkerMetrics
from cfn.processors.pipeline import Output, Pipeline, header_map
from cfn.processors.settings import WorkerSettings
from cfn.topics import ensure_topics

FAR_FUTURE = 4_102_444_800.0  # closes every window and fires every timer at the end


@dataclass(frozen=True)
class Bound:
    """A replay boundary: a point in time (epoch ms) or one partition's offset."""

    ms: int | None = None
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def parse(cls, text: str) -> Bound:
        """ "2026-11-22T10:00:00Z" (any ISO 8601) or "3:1200" (partition:offset).

        Raises:
            ValueError: neither form.
        """
        head, sep, tail = text.partition(":")
        if sep and head.isdigit() and tail.isdigit():
            return cls(partition=int(head), offset=int(tail))
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is neither an ISO time nor partition:offset (e.g. 3:1200)"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone; add Z or +00:00")
        return cls(ms=int(moment.timestamp() * 1000))


async def _ranges(
    consumer: AIOKafkaConsumer, topic: str, start: Bound | None, stop: Bound | None
) -> dict[TopicPartition, tuple[int, int]]:
    """[first, end) offsets per partition for the requested range."""
    cluster = await internals.fetch_metadata(consumer)  # the consumer's own view is lazy
    partitions = sorted(cluster.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in partitions]
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)

    async def resolve(
        bound: Bound | None, default: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        if bound is None:
            return dict(default)
        if bound.ms is not None:
            found = await consumer.offsets_for_times({tp: bound.ms for tp in tps})
            return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}
        chosen = dict(default)
        for tp in tps:
            if tp.partition == bound.partition and bound.offset is not None:
                chosen[tp] = bound.offset
        return chosen

    first = await resolve(start, begin)
    last = await resolve(stop, end)
    return {
        tp: (first[tp], min(last[tp], end[tp])) for tp in tps if first[tp] < min(last[tp], end[tp])
    }


async def _read(settings: WorkerSettings, start: Bound | None, stop: Bound | None) -> list[Any]:
    topic = settings.topic("raw")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        ranges = await _ranges(consumer, topic, start, stop)
        if not ranges:
            return []
        consumer.assign(list(ranges))
        for tp, (first, _end) in ranges.items():
            consumer.seek(tp, first)
        total = sum(end - first for first, end in ranges.values())
        records: list[Any] = []
        remaining = dict(ranges)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, items in batch.items():
                _first, end = remaining[tp]
                records.extend(r for r in items if r.offset < end)
                if items and items[-1].offset >= end - 1:
                    remaining.pop(tp, None)
                    consumer.pause(tp)
            _progress("read", len(records), total)
        return records
    finally:
        await consumer.stop()


def _progress(stage: str, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r{stage:>8} [{bar}] {done}/{total}")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")


def process(settings: WorkerSettings, records: Iterable[Any]) -> list[Output]:
    """Run records through a fresh pipeline in arrival order; flush all timers at the end.

    The order is (received_at, partition, offset): the order ingest accepted them, so a replay
    decides dedup and correlation as the live run did for the same range.
    """
    pipeline = Pipeline(
        settings, {}, {}, {}, WorkerMetrics.create(CollectorRegistry()), lambda: FAR_FUTURE
    )

    def received(record: Any) -> tuple[int, int, int]:
        headers = header_map(record.headers)
        value = headers.get("cfn-received-at")
        return (int(value) if value else record.timestamp, record.partition, record.offset)

    ordered = sorted(records, key=received)
    outputs: list[Output] = []
    rate_inputs: list[Output] = []
    for i, record in enumerate(ordered, 1):
        outputs += pipeline.on_raw(
            record.value or b"",
            record.key,
            header_map(record.headers),
            record.partition,
            record.offset,
            record.timestamp,
        )
        # Drained per record: the rate counter sees events one by one, in arrival order.
        rate_inputs.extend(pipeline.drain_rate_inputs(record.partition))
        if i % 1000 == 0 or i == len(ordered):
            _progress("process", i, len(ordered))
    partitions = {record.partition for record in ordered}
    for partition in sorted(partitions):
        for out in pipeline.on_tick(FAR_FUTURE, partition):
            if out.role != "rate-input":
                outputs.append(out)
    # Rates see the same partitions as live (the rate-input topic is keyed by alert_type), so
    # each partition's watermark, and so each late/on-time decision, matches the live run's.
    used: set[int] = set()
    for out in rate_inputs:
        target = partition_for(out.key, settings.partitions)
        used.add(target)
        outputs.extend(pipeline.on_rate_input(out.value, target))
    for target in sorted(used):
        outputs.extend(pipeline.finish_rates(target, int(FAR_FUTURE)))
    return outputs


async def _write(settings: WorkerSettings, prefix: str, outputs: list[Output]) -> None:
    target = WorkerSettings(**{**settings.__dict__, "topic_prefix": prefix})
    roles = [(role, target.topic(role)) for role in ("events", "incidents", "rates", "dlq")]
    await ensure_topics(settings.bootstrap, roles, settings.partitions, settings.replication)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = []
        for i, out in enumerate(outputs, 1):
            futures.append(
                await producer.send(target.topic(out.role), key=out.key, value=out.value)
            )
            if i % 1000 == 0 or i == len(outputs):
                _progress("write", i, len(outputs))
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def run_replay(start: str, stop: str | None, output_prefix: str | None) -> int:
    """Foreground entry for `cfn replay`."""
    settings = WorkerSettings.from_env()
    try:
        first = Bound.parse(start)
        last = Bound.parse(stop) if stop else None
    except ValueError as exc:
        print(f"cfn replay: {exc}", file=sys.stderr)
        return 2
    began = time.monotonic()
    records = asyncio.run(_read(settings, first, last))
    if not records:
        print("cfn replay: nothing in that range", file=sys.stderr)
        return 0
    outputs = process(settings, records)
    prefix = output_prefix or settings.topic_prefix
    asyncio.run(_write(settings, prefix, outputs))
    counts: dict[str, int] = {}
    for out in outputs:
        counts[out.role] = counts.get(out.role, 0) + 1
    summary = ", ".join(f"{n} {role}" for role, n in sorted(counts.items()))
    print(
        f"cfn replay: {len(records)} raw records -> {summary} into {prefix}* "
        f"in {time.monotonic() - began:.1f}s"
    )
    return 0
