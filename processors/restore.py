"""Bringing tasks back on assignment: their committed offsets, their state from the changelog.

A task new to this worker is opened in this order: its producer fences (processors/
transactions.py), then the group's committed offsets are read once they are stable, then the
task's changelog partition is read to its last stable offset (read_committed, so aborted
writes never come back), then the consumer seeks to those offsets, which are exactly those of
the last committed transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from cfn import internals
from cfn.processors.changelog import ChangelogTable
from cfn.processors.migration import MIGRATED_KEY, Load, Migration
from cfn.processors.settings import WorkerSettings
from cfn.processors.transactions import Task

log = logging.getLogger("cfn.worker")

SETTLE_TIMEOUT = 25.0  # seconds: the worker transaction timeout, the broker's 10 s check, a margin
RESTORE_TIMEOUT = 600.0  # seconds for the changelogs of the partitions assigned at once


class Restorer:
    """Reads the changelog into the tables for the partitions being opened.

    With CFN_TRANSACTIONS=worker it keeps a read_uncommitted consumer (the probe) from `start`
    to `stop`, which reads high watermarks to tell when no transaction is open any more.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        client_options: Mapping[str, Any],
        tables: Mapping[str, ChangelogTable],
        changelog: str,
        migration: Migration,
    ) -> None:
        self.settings = settings
        self._client_options = client_options
        self.tables = tables
        self.changelog = changelog
        self.migration = migration
        self._probe: AIOKafkaConsumer | None = None

    def reader(self, isolation_level: str, **options: Any) -> AIOKafkaConsumer:
        """A consumer outside the group, for the changelogs (restore, high watermarks)."""
        return AIOKafkaConsumer(
            **self._client_options,
            group_id=None,
            enable_auto_commit=False,
            isolation_level=isolation_level,
            **options,
        )

    async def start(self) -> None:
        """Start the probe (CFN_TRANSACTIONS=worker); its start is not on the ready path."""
        if self.settings.transactions == "worker":
            self._probe = self.reader("read_uncommitted")
            await self._probe.start()

    def track(self) -> None:
        """Assign the probe the changelog (paused: it never fetches), so that its client keeps
        the changelog's metadata: an ask for the offsets of a topic it does not track fetches it
        first."""
        if self._probe is not None:
            changelogs = [
                TopicPartition(self.changelog, p) for p in range(self.settings.partitions)
            ]
            self._probe.assign(changelogs)
            self._probe.pause(*changelogs)

    async def stop(self) -> None:
        if self._probe is not None:
            await self._probe.stop()

    async def restore(self, partitions: list[int]) -> None:
        """Load the partitions' state from the changelog, up to its last stable offset (and,
        for a partition not migrated yet, from an earlier version's per-table changelogs)."""
        by_name = {table.name.encode(): table for table in self.tables.values()}
        tps = [TopicPartition(self.changelog, p) for p in partitions]
        written: set[int] = set()  # partitions with a record in the shared changelog
        unknown = 0

        def load(record: ConsumerRecord[Any, Any]) -> None:
            nonlocal unknown
            name, _, key = record.key.partition(b":")
            table = by_name.get(name)
            written.add(record.partition)
            if table is not None:
                value = None if record.value is None else table.decode(record.value)
                table.load(key.decode(), value)
            elif record.key != MIGRATED_KEY:  # a table of a later version: not this one's state
                unknown += 1

        # A seek waits for the fetcher's round, which on an empty partition is a long poll of
        # fetch_max_wait_ms; a restore reads what is there and stops, so it need not wait long.
        reader = self.reader("read_committed", auto_offset_reset="earliest", fetch_max_wait_ms=50)
        await reader.start()
        try:
            loaded = await self.read(reader, tps, load)
            loaded += await self.migration.restore(reader, partitions, written, self.read)
        finally:
            await reader.stop()
        if unknown:
            log.warning("%d changelog records of unknown tables ignored", unknown)
        log.info("restored %d changelog records for partitions %s", loaded, partitions)

    async def read(self, reader: AIOKafkaConsumer, tps: list[TopicPartition], load: Load) -> int:
        """Hand every keyed record of `tps` below their stable ends to `load`; returns how many."""
        return await read_to_ends(reader, await self._stable_ends(reader, tps), load)

    async def _stable_ends(
        self, reader: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Where a restore of `tps` stops: their last stable offsets, once no transaction is
        open on them with one producer per worker (`_settle`), the old topics' included."""
        if self.settings.transactions == "worker":
            return await self._settle(reader, tps)
        return dict(await reader.end_offsets(tps))

    async def _settle(
        self, reader: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Wait until no transaction is open on the changelog partitions about to be restored:
        their last stable offset has reached the high watermark they have now.

        With one producer per worker, the previous owner's last transaction is not aborted by
        a successor's init_transactions. Its offsets are settled by then (`committed_offsets`),
        but its markers reach the changelog partitions one by one, and a restore that stopped at
        the last stable offset before them would miss state its committed offsets account for.
        Bounded by SETTLE_TIMEOUT (the broker aborts a dead worker's transaction by then).
        Returns the last stable offsets it saw.
        """
        assert self._probe is not None, "started with CFN_TRANSACTIONS=worker"
        # Both at once, in either order: stable >= high means nothing was written past the
        # stable offset by a transaction still open when the stable offset was taken.
        high, stable = await asyncio.gather(self._probe.end_offsets(tps), reader.end_offsets(tps))
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            open_ = sorted(str(tp) for tp in tps if stable[tp] < high[tp])
            if not open_:
                return dict(stable)
            if time.monotonic() >= deadline:
                log.warning("transactions still open on %s; restoring what is committed", open_)
                return dict(stable)
            await asyncio.sleep(0.1)
            stable = await reader.end_offsets(tps)


async def committed_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], owners: str
) -> dict[TopicPartition, int]:
    """The group's committed offsets of `tps` (-1 for none), once no transaction that holds
    offsets of them is open (OffsetFetch with require_stable); `owners` is the transactional
    id prefix of the workers' producers (see internals.fetch_committed)."""
    committed = await internals.fetch_committed(consumer, tps, owners=owners)
    return {tp: committed.get(tp, -1) for tp in tps}


def seek(
    consumer: AIOKafkaConsumer,
    raw_topic: str,
    tasks: Mapping[int, Task],
    committed: Mapping[TopicPartition, int],
) -> None:
    """Position the consumer at the group's committed offsets of the new tasks.

    A partition without any is left to the consumer, which finds none either and starts at
    the beginning (auto_offset_reset="earliest"). An explicit seek_to_beginning would wait
    for a round of the fetcher, a long poll on empty partitions, on a first start.
    """
    for tp, offset in committed.items():
        if offset >= 0:
            consumer.seek(tp, offset)
            if tp.topic == raw_topic:
                tasks[tp.partition].next_raw = offset
            else:
                tasks[tp.partition].next_rate = offset


async def read_to_ends(
    reader: AIOKafkaConsumer, ends: Mapping[TopicPartition, int], load: Load
) -> int:
    """Hand every keyed record of the partitions below their `ends` to `load`, from the
    beginning; returns how many. The last offset is often a transaction marker that no
    consumer receives: a partition is done when its position reaches its end, not a record."""
    tps = list(ends)
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    pending = {tp for tp in tps if await reader.position(tp) < ends[tp]}
    loaded = 0
    while pending:
        batch = await reader.getmany(*pending, timeout_ms=500, max_records=10_000)
        for tp, records in batch.items():
            end = ends[tp]
            for record in records:
                if record.offset < end and record.key is not None:
                    load(record)
                    loaded += 1
        pending = {tp for tp in pending if await reader.position(tp) < ends[tp]}
    return loaded
