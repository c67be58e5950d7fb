"""Moving the state of per-table changelogs, as development builds before 0.1.0 wrote them,
into the app's one changelog.

A partition whose shared changelog holds no record is restored once from the per-table
changelogs (`<app id>-<table>-changelog`) and written whole to the shared one, with a marker
record, in its first commit; from then on the old topics are not read for that partition
(docs/design.md, "Upgrading from per-table changelogs").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from cfn import internals
from cfn.config import legacy_changelog_topic
from cfn.processors.changelog import ChangelogTable

log = logging.getLogger("cfn.worker")

# The shared changelog's record saying that its partition holds everything the per-table
# changelogs of an earlier version held: from then on they are not read for that partition.
MIGRATED_KEY = b"cfn:migrated"
MIGRATED_VALUE = b'{"from":"per-table changelogs","format":1}'

Load = Callable[[ConsumerRecord[Any, Any]], None]
# Reads the records of some partitions to their stable ends, handing each to a Load; returns
# how many (processors/restore.py).
Read = Callable[[AIOKafkaConsumer, list[TopicPartition], Load], Awaitable[int]]


class Migration:
    """The per-table changelogs found at start, and the partitions restored from them whose
    state is not yet in the shared changelog."""

    def __init__(self, app_id: str, tables: Mapping[str, ChangelogTable], changelog: str) -> None:
        self.app_id = app_id
        self.tables = tables
        self.changelog = changelog
        # table -> (topic, partition count) of the per-table changelogs still in the cluster.
        # Empty unless upgrading.
        self.legacy: dict[str, tuple[str, int]] = {}
        self.migrating: set[int] = set()  # partitions restored from them, not yet committed

    async def find(self, consumer: AIOKafkaConsumer) -> None:
        """Look for the per-table changelogs that this worker can see."""
        cluster = await internals.fetch_metadata(consumer)
        found = {}
        for table in self.tables:
            topic = legacy_changelog_topic(self.app_id, table)
            count = len(cluster.partitions_for_topic(topic) or ())
            if count:
                found[table] = (topic, count)
        if found:
            log.warning(
                "changelogs of an earlier version found (%s): each partition's state is read "
                "from them once and moved to %s in its first commit",
                ", ".join(topic for topic, _count in found.values()),
                self.changelog,
            )
        self.legacy = found

    async def restore(
        self,
        reader: AIOKafkaConsumer,
        partitions: list[int],
        written: set[int],
        read: Read,
    ) -> int:
        """Load the partitions not migrated yet from the per-table changelogs, and mark all
        their state changed so that their first commit writes it, and the marker, to the
        shared changelog. Returns the records read."""
        if not self.legacy:
            return 0
        # A partition is migrated in the transaction of its first write to the shared
        # changelog (the marker with it): one with any record there has nothing to read here.
        todo = [p for p in partitions if p not in written]
        if not todo:
            return 0
        by_topic = {topic: self.tables[table] for table, (topic, _n) in self.legacy.items()}
        tps = [
            TopicPartition(topic, p)
            for topic, count in self.legacy.values()
            for p in todo
            if p < count
        ]

        def load(record: ConsumerRecord[Any, Any]) -> None:
            table = by_topic[record.topic]
            table.load(
                record.key.decode(), None if record.value is None else table.decode(record.value)
            )

        loaded = await read(reader, tps, load) if tps else 0
        moved = set(todo)
        for table in self.tables.values():
            table.touch(moved)
        self.migrating.update(todo)
        log.info(
            "read %d records of the per-table changelogs for partitions %s, to be moved to %s",
            loaded,
            todo,
            self.changelog,
        )
        return loaded

    def committed(self, partition: int) -> None:
        """The partition's commit went through: if it carried the marker, it is migrated."""
        if partition in self.migrating:
            self.migrating.discard(partition)
            log.info("partition %d migrated to %s", partition, self.changelog)

    def forget(self, partitions: set[int] | list[int]) -> None:
        """The partitions are no longer this worker's, or their state is dropped."""
        self.migrating.difference_update(partitions)
