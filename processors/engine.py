"""The worker's engine: the poll loop and rebalancing, over tasks that commit exactly once.

Work is split into *tasks*, one per partition number p. Task p owns `cfn.raw` p and
`cfn.rate-input` p (the range assignor gives both to the same worker, the topics having the
same partition count) and the state of p in its changelog-backed tables (processors/
changelog.py). Everything a transaction covers between two commits (outputs, changelog writes,
consumed offsets) commits or aborts together (processors/transactions.py), so a read_committed
subscriber sees each input's effects exactly once or not at all.

The engine polls, hands records and timer ticks to the pipeline, sends what it returns and
commits. A rebalance commits every open transaction before the partitions are handed back; a
task new to this worker is opened as processors/restore.py says. A task whose transaction
fails is dropped whole (state included), with every task that shares the transaction, and the
group is asked to rebalance: they come back through the same restore, never with half-applied
in-memory state. docs/design.md, "Exactly once", says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalOperation, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from cfn import internals
from cfn.access import AccessDenied, denial
from cfn.config import OUTPUT_ROLES, changelog_topic
from cfn.kafka import aiokafka_options
from cfn.partition import partition_for
from cfn.processors import restore
from cfn.processors.changelog import ChangelogTable, changelog_records
from cfn.processors.identity import new_worker_id
from cfn.processors.migration import MIGRATED_KEY, MIGRATED_VALUE, Migration
from cfn.processors.pipeline import Output, Pipeline, header_map
from cfn.processors.restore import RESTORE_TIMEOUT, Restorer
from cfn.processors.settings import WorkerSettings
from cfn.processors.transactions import (
    COMMIT_TIMEOUT,
    WORKER_TXN_TIMEOUT_MS,
    Producers,
    Task,
    Txn,
    start_all,
    stop_producer,
)

# Names other modules and the tests import from here, defined beside it.
__all__ = [
    "MIGRATED_KEY",
    "WORKER_TXN_TIMEOUT_MS",
    "ChangelogTable",
    "Engine",
    "Task",
    "Txn",
]

log = logging.getLogger("cfn.worker")

MAX_RECORDS = 2000  # per poll; bounds the work between two checks of the timers
# How long the broker may hold the worker's fetch when it has nothing new for it (the client's
# default is 500 ms). aiokafka keeps one fetch in flight per broker, for every partition it is
# not still holding records of, raw and repartition alike, so after an idle spell a burst's
# first records wait for the held fetch (docs/design.md). Idle, it costs the broker 20 empty
# fetches a second per worker.
FETCH_MAX_WAIT_MS = 50
ASSIGN_RETRY = 1.0  # seconds between two attempts to open newly assigned tasks
METADATA_WAIT = 30.0  # seconds for new topics to reach every broker's metadata


class Engine:
    """Owns the consumer, the tasks and the timers; hands records to the pipeline."""

    def __init__(
        self,
        settings: WorkerSettings,
        pipeline: Pipeline,
        tables: dict[str, ChangelogTable],
    ) -> None:
        if not settings.worker_id:  # `cfn worker` keeps one (processors/identity.py)
            settings = replace(settings, worker_id=new_worker_id())
        self.settings = settings
        self.pipeline = pipeline
        self.tables = tables
        self.raw_topic = settings.topic("raw")
        self.rate_topic = settings.topic("rate-input")
        self.topics = {role: settings.topic(role) for role in (*OUTPUT_ROLES, "rate-input")}
        self.changelog = changelog_topic(settings.app_id)
        self.denied: AccessDenied | None = None  # Kafka refused a permission: the worker stops
        self._stop: asyncio.Event | None = None
        client_options = aiokafka_options(settings.bootstrap, settings.security)  # one TLS context
        self._client_options = client_options
        self.tasks: dict[int, Task] = {}
        self.producers = Producers(settings, client_options)
        self.migration = Migration(settings.app_id, tables, self.changelog)
        self.restorer = Restorer(settings, client_options, tables, self.changelog, self.migration)
        self._generation = -2  # the group generation of the current assignment
        self.metrics = pipeline.metrics
        self.ready = False
        self.processed = 0
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._closing = False
        self.copartitioned = False  # set at start when every topic has CFN_PARTITIONS partitions
        self._rate_partitions: dict[bytes, int] = {}
        self._partition_counts: dict[str, int] = {}

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "the engine is not started"
        return self._consumer

    async def start(self) -> None:
        s = self.settings
        session_ms = int(s.session_timeout * 1000)
        self._consumer = AIOKafkaConsumer(
            **self._client_options,
            group_id=s.app_id,
            client_id=f"{s.app_id}-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # rate inputs are written in transactions
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 5),
            rebalance_timeout_ms=max(session_ms, 60_000),
        )
        await asyncio.gather(self._consumer.start(), self.restorer.start())
        internals.check_consumer(self._consumer)
        self.copartitioned = await self._copartitioned()
        await self.migration.find(self.consumer)
        self.restorer.track()
        self.pipeline.flap_marks = self.copartitioned
        if s.transactions == "worker":
            await self._start_shared()
        self._consumer.subscribe([self.raw_topic, self.rate_topic], listener=_Listener(self))

    async def undo_start(self) -> None:
        """Stop what a failed `start` started, so that it can be called again."""
        consumer, self._consumer = self._consumer, None
        shared, self.producers.shared = self.producers.shared, None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(COMMIT_TIMEOUT):
                await asyncio.gather(
                    *([consumer.stop()] if consumer is not None else []),
                    self.restorer.stop(),
                    *([stop_producer(shared.producer)] if shared is not None else []),
                    return_exceptions=True,
                )

    async def _start_shared(self) -> None:
        """Start the worker's producer before joining the group. Its init_transactions aborts
        the transaction that a killed earlier worker under the same id (processors/identity.py)
        left open: read_committed readers of the partitions it wrote go on now, not once the
        dead member's session has expired and the partitions are assigned. A failure other
        than a refusal is left to the first assignment, which starts a producer anyway."""
        _, fresh = self.producers.for_tasks([], self.consumer)
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT):
                await start_all([txn.producer for txn in fresh])
        except Exception as exc:
            await asyncio.gather(*(stop_producer(txn.producer) for txn in fresh))
            self.producers.shared = None
            if denial(exc, "worker") is not None:
                raise
            log.warning(
                "the worker's producer did not start (%s); again on assignment",
                type(exc).__name__,
            )

    async def _copartitioned(self) -> bool:
        """True when the inputs and every output have exactly CFN_PARTITIONS partitions.

        A topic created a moment ago may not be in every broker's metadata yet (the broker
        that answers is any of the cluster's): asked again for up to METADATA_WAIT seconds.
        """
        topics = {self.raw_topic, *self.topics.values()}
        deadline = time.monotonic() + METADATA_WAIT
        while True:
            cluster = await internals.fetch_metadata(self.consumer)
            self._partition_counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
            empty = sorted(t for t, n in self._partition_counts.items() if n == 0)
            if not empty:
                break
            if time.monotonic() >= deadline:
                raise KafkaError(f"no partitions in the metadata of {', '.join(empty)}")
            await asyncio.sleep(0.2)
        counts = set(self._partition_counts.values())
        if counts != {self.settings.partitions}:
            log.warning(
                "topic partition counts %s differ from CFN_PARTITIONS=%d: outputs are "
                "partitioned by key hash, not by their input partition",
                sorted(counts),
                self.settings.partitions,
            )
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, process, tick and commit until `stop` is set; then commit and leave."""
        s = self.settings
        wait_ms = int(max(0.01, min(s.commit_interval, s.tick_interval)) * 1000)
        next_tick = next_commit = time.monotonic()
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    batch = await self.consumer.getmany(timeout_ms=wait_ms, max_records=MAX_RECORDS)
                except KafkaError as exc:  # the group or an input topic refused to this worker
                    if self._refused(exc):
                        break
                    raise
                async with self._lock:
                    for tp, records in batch.items():
                        await self._guarded(tp.partition, self._process, tp, records)
                    now = time.monotonic()
                    if now >= next_tick and self.ready:
                        next_tick = now + s.tick_interval
                        await self._tick()
                    if now >= next_commit:
                        started = time.monotonic()
                        committed = await self._commit_all()
                        if committed:
                            self.metrics.commit_duration.observe(time.monotonic() - started)
                        next_commit = now + self.commit_pause(committed)
        finally:
            await self.close()

    def commit_pause(self, committed: int) -> float:
        """Seconds until the next commit round after one of `committed` transactions: the
        commit interval, stretched so that rounds write at most CFN_MAX_TRANSACTIONS_PER_S when
        that is set (it is off by default: see docs/design.md)."""
        s = self.settings
        if s.max_transactions <= 0:
            return s.commit_interval
        return max(s.commit_interval, committed / s.max_transactions)

    async def close(self) -> None:
        async with self._lock:
            if self._closing:
                return
            self._closing = True
            self.ready = False
            await self._commit_all()
        if self._consumer is not None:
            await self._consumer.stop()
        await self.restorer.stop()
        shared = self.producers.shared
        txns = {t.txn for t in self.tasks.values()} | ({shared} if shared else set())
        await asyncio.gather(*(stop_producer(txn.producer) for txn in txns))
        self.tasks.clear()
        self.producers.shared = None

    # ---- processing -------------------------------------------------------------------------

    async def _process(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        task = self.tasks.get(tp.partition)
        if task is None or not self.ready:
            # Not (or no longer) ours, or a rebalance is under way: records fetched before it
            # are fetched again from the committed offsets once the assignment is known.
            return
        raw = tp.topic == self.raw_topic
        after = task.next_raw if raw else task.next_rate
        # Records below `after` were fetched again after a seek: already in this task's work.
        fresh = [record for record in records if record.offset >= after]
        if not fresh:
            return
        if raw and 0 <= after < fresh[0].offset:  # cfn.raw has no markers: a jump is a deletion
            self.pipeline.metrics.raw_skipped.labels(str(tp.partition)).inc(fresh[0].offset - after)
            log.error("%s %d: offsets %d..%d deleted unread: lost", *tp, after, fresh[0].offset - 1)
        await self._begin(task)
        pipeline = self.pipeline
        for record in fresh:
            if raw:
                outputs = pipeline.on_raw(
                    record.value or b"",
                    record.key,
                    header_map(record.headers),
                    tp.partition,
                    record.offset,
                    record.timestamp,
                )
                self.processed += 1
            else:
                outputs = pipeline.on_rate_input(record.value, tp.partition)
            await self._send(task, outputs)
        task.offsets[tp] = fresh[-1].offset + 1
        if raw:
            task.next_raw = task.offsets[tp]
        else:
            task.next_rate = task.offsets[tp]

    async def _tick(self) -> None:
        """The explicit timers: expiry, orphan release, dedup TTL and rate watermarks, for
        every owned partition, inside that partition's transaction."""
        now = self.pipeline.clock()
        for partition in sorted(self.tasks):
            # Every owned partition, idle or not: its tick record keeps the repartition topic
            # moving, so a group's committed offsets reach past the last transaction marker
            # (skipping idle partitions left them one behind the end offsets for good).
            await self._guarded(partition, self._tick_task, partition, now)
        self.pipeline.metrics.consumer_lag.labels(self.raw_topic).set(self.raw_lag())
        self.pipeline.publish_gauges()

    def raw_lag(self) -> int:
        """Records of `cfn.raw` behind the tasks, over the partitions the consumer is assigned.
        A task can outlive its partition's assignment for a moment: a rebalance changes the
        consumer's assignment before the callback that releases the task gets the lock."""
        assigned = self.consumer.assignment()
        lag = 0
        for partition, task in self.tasks.items():
            tp = TopicPartition(self.raw_topic, partition)
            high = self.consumer.highwater(tp) if tp in assigned else None
            if high is not None and task.next_raw >= 0:
                lag += max(0, high - task.next_raw)
        return lag

    async def _tick_task(self, partition: int, now: float) -> None:
        task = self.tasks[partition]
        await self._begin(task)
        await self._send(task, self.pipeline.on_tick(now, partition))

    async def _begin(self, task: Task) -> None:
        await task.txn.begin()

    async def _send(self, task: Task, outputs: Iterable[Output]) -> None:
        topics = self.topics
        for out in outputs:
            partition = out.partition
            if partition is None:
                partition = self._partition_for(out, task.partition)
            await self._append(task, topics[out.role], partition, out.key, out.value)

    async def _append(
        self, task: Task, topic: str, partition: int, key: bytes, value: bytes | None
    ) -> None:
        """Add one record to the open batch for (topic, partition) of the task's transaction."""
        await task.txn.append(topic, partition, key, value)

    def _partition_for(self, out: Output, source: int) -> int:
        """Where a keyed output goes, with the Java client's partitioner, cheaply.

        Outputs keyed like their input (events, incidents, dead letters from raw p; rates from
        rate-input p) go to partition p: the producer that wrote the input hashed the same key
        over the same partition count. So do cfn.incident-state's, keyed by incident_id: an
        incident's records are always on its incident key's partition (compaction needs a key to
        stay on one partition), and the task's transaction stays on its own partitions. Rate
        inputs (keyed by alert_type, a small set) are hashed once per distinct key. Without
        co-partitioning every output is hashed (cfn.incident-state's by its incident_id).
        """
        if out.role != "rate-input":
            if self.copartitioned:
                return source
            return partition_for(out.key, self._partition_counts[self.topics[out.role]])
        partition = self._rate_partitions.get(out.key)
        if partition is None:
            if len(self._rate_partitions) > 100_000:
                self._rate_partitions.clear()
            count = self._partition_counts[self.rate_topic]
            partition = self._rate_partitions[out.key] = partition_for(out.key, count)
        return partition

    # ---- commits ----------------------------------------------------------------------------

    async def _commit_all(self) -> int:
        """Commit every open transaction, in parallel; returns how many were open."""
        by_txn: dict[Txn, list[Task]] = {}
        for task in self.tasks.values():
            if task.txn.open:
                by_txn.setdefault(task.txn, []).append(task)
        await asyncio.gather(
            *(self._guarded(tasks[0].partition, self._commit, tasks) for tasks in by_txn.values())
        )
        return len(by_txn)

    async def _commit(self, tasks: list[Task]) -> None:
        """Changelog writes, outputs and consumed offsets of the tasks of one transaction: all
        or nothing.

        Bounded by COMMIT_TIMEOUT: with Kafka away, an idempotent producer retries forever;
        the tasks are dropped instead (see `_guarded`) and rebuilt once Kafka answers again.
        """
        async with asyncio.timeout(COMMIT_TIMEOUT):
            await self._commit_steps(tasks)

    async def _commit_steps(self, tasks: list[Task]) -> None:
        changelog = self.changelog
        migrating = self.migration.migrating
        for task in tasks:
            p = task.partition
            await self._send(task, self.pipeline.drain_rate_inputs(p))
            for key, value in changelog_records(self.tables.values(), p):
                await self._append(task, changelog, p, key, value)
            if p in migrating:
                await self._append(task, changelog, p, MIGRATED_KEY, MIGRATED_VALUE)
        txn = tasks[0].txn
        await txn.flush()
        offsets: dict[TopicPartition, int] = {}
        for task in tasks:
            offsets.update(task.offsets)
        await txn.commit(offsets, self.settings.app_id)
        for task in tasks:
            task.offsets = {}
            self.migration.committed(task.partition)

    async def _guarded(self, partition: int, step: Any, *args: Any) -> None:
        """Run one step of a task; a failure drops the task, and every task that shares its
        transaction, and asks for a rebalance."""
        try:
            await step(*args)
        except (TimeoutError, KafkaError, IllegalOperation) as exc:
            # IllegalOperation: aiokafka's word for "this producer's transaction is gone", e.g.
            # after it was fenced. Anything else is a bug in cfn and stops the worker.
            task = self.tasks.get(partition)
            cause = None if task is None else internals.transaction_error(task.producer)
            if not self._refused(exc) and cause is not None:
                self._refused(cause)
            task = self.tasks.get(partition)
            if task is None:
                return
            failed = sorted(p for p, t in self.tasks.items() if t.txn is task.txn)
            task.txn.abandon()  # its batches' errors are this one's
            if self.producers.shared is task.txn:
                self.producers.shared = None  # not kept: `_release` closes it
            log.error(
                "%s failed (%s: %s); dropping %s and rejoining the group",
                f"task {partition}" if len(failed) == 1 else "the worker's transaction",
                type(exc).__name__,
                exc,
                "its state" if len(failed) == 1 else f"the state of partitions {failed}",
            )
            # Its producer is closed without committing: the broker aborts the open transaction
            # when the next owner (maybe this worker again) calls init_transactions.
            await self._release(set(failed))
            self.metrics.task_failures.labels(type(exc).__name__).inc()
            self.metrics.partitions.set(len(self.tasks))
            self._rebuild_indexes()
            internals.request_rejoin(self.consumer)

    # ---- rebalancing ------------------------------------------------------------------------

    async def on_revoked(self) -> None:
        """Before partitions move: commit everything that is open (eager protocol: all)."""
        async with self._lock:
            self.ready = False
            if not self._closing:
                await self._commit_all()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            if self._closing:
                return
            started = time.monotonic()
            mine = {tp.partition for tp in assigned}
            generation = internals.group_generation(self.consumer)
            if self.settings.transactions == "worker" and generation != self._generation + 1:
                # Generations went by without this worker (it was expelled, e.g. paused past its
                # session): another may have owned its partitions meanwhile, and nothing fenced
                # this worker's producer. Its in-memory state may be stale: restore it all.
                await self._release(set(self.tasks))
            self._generation = generation
            gone = set(self.tasks) - mine
            await self._release(gone)
            new = sorted(mine - set(self.tasks))
            if new and not await self._open_tasks_retrying(new):
                return
            if new:
                self.metrics.restore_duration.observe(time.monotonic() - started)
            self.metrics.partitions.set(len(self.tasks))
            self._rebuild_indexes()
            self.ready = True
            t = self.tables
            log.info(
                "state rebuilt for partitions %s: %d dedup ids, %d incidents, %d rate keys "
                "in %.2fs (%d partitions new, %d released)",
                sorted(mine),
                len(t["dedup"]),
                len(t["incidents"]),
                len(t["rates"]),
                time.monotonic() - started,
                len(new),
                len(gone),
            )

    async def _release(self, partitions: set[int]) -> None:
        """Forget the tasks of `partitions` and their state (committed, failed or not theirs),
        and close their producers unless the worker's shared one."""
        txns = {self.tasks.pop(partition).txn for partition in partitions}
        self.migration.forget(partitions)
        for partition in partitions:
            self.pipeline.forget_rate_inputs(partition)
        for table in self.tables.values():
            table.drop(partitions)
        txns.discard(self.producers.shared)
        await asyncio.gather(*(stop_producer(txn.producer) for txn in txns))

    async def _open_tasks_retrying(self, partitions: list[int]) -> bool:
        """Open new tasks, retrying while Kafka does not answer (a broker restart can hand out
        partitions before every coordinator is back). This runs inside the rebalance callback,
        where aiokafka sends no heartbeats, so it gives up after a third of the session timeout,
        asking for a new rebalance: no assignment is ever left half-open, and the member is not
        expelled for silence."""
        deadline = time.monotonic() + self.settings.session_timeout / 3
        while True:
            try:
                await self._open_tasks(partitions)
                return True
            except (TimeoutError, KafkaError, IllegalOperation, OSError) as exc:
                if self._refused(exc):
                    return False
                if time.monotonic() >= deadline or self._closing:
                    log.warning(
                        "could not open tasks %s (%s%s); asking the group to rebalance",
                        partitions,
                        type(exc).__name__,
                        f": {exc}" if str(exc) else "",
                    )
                    self.metrics.task_failures.labels(type(exc).__name__).inc()
                    internals.request_rejoin(self.consumer)
                    return False
                await asyncio.sleep(ASSIGN_RETRY)

    def _refused(self, exc: BaseException) -> bool:
        """A refusal no retry cures (a missing ACL): remember it, say it once, and stop the
        worker, whose exit names it, instead of retrying for ever. True if `exc` was one."""
        refused = denial(exc, "worker")
        if refused is None:
            return False
        if self.denied is None:
            self.denied = refused
            log.error("%s; stopping", refused)
        if self._stop is not None:
            self._stop.set()
        return True

    async def _open_tasks(self, partitions: list[int]) -> None:
        """Fence, find the committed offsets, restore, seek: the order matters (see
        processors/restore.py)."""
        txns, fresh = self.producers.for_tasks(partitions, self.consumer)
        tasks = {p: Task(p, txn) for p, txn in txns.items()}
        step = "fencing the previous owner"
        try:
            # start() runs init_transactions: the previous owner's open transaction under the
            # same id is aborted (its offsets and changelog writes with it) and it is fenced.
            async with asyncio.timeout(COMMIT_TIMEOUT):
                await start_all([txn.producer for txn in fresh])
                # Stable offsets: a transaction of the previous owner that holds offsets of
                # these partitions has ended (one producer per worker is fenced only by the
                # group generation, so its last transaction may still be under way).
                step = "waiting for the committed offsets to be stable"
                committed = await self._committed(partitions)
            for table in self.tables.values():
                table.drop(set(partitions))
            step = "restoring the changelog"
            async with asyncio.timeout(RESTORE_TIMEOUT):
                await self.restorer.restore(partitions)
            restore.seek(self.consumer, self.raw_topic, tasks, committed)
        except TimeoutError as exc:
            await self._abandon(partitions, fresh)
            raise TimeoutError(f"timed out {step}") from exc
        except BaseException:
            await self._abandon(partitions, fresh)
            raise
        self.tasks.update(tasks)

    async def _abandon(self, partitions: list[int], fresh: list[Txn]) -> None:
        """Undo a half-open `_open_tasks`: its new producers stopped, its state dropped."""
        await asyncio.gather(*(stop_producer(txn.producer) for txn in fresh))
        if self.producers.shared in fresh:
            self.producers.shared = None
        for table in self.tables.values():
            table.drop(set(partitions))
        self.migration.forget(partitions)

    async def _committed(self, partitions: list[int]) -> dict[TopicPartition, int]:
        tps = [TopicPartition(t, p) for p in partitions for t in (self.raw_topic, self.rate_topic)]
        # Every producer of the app's, either CFN_TRANSACTIONS mode (processors/transactions.py).
        return await restore.committed_offsets(self.consumer, tps, f"{self.settings.app_id}-")

    def _rebuild_indexes(self) -> None:
        """Timers and indexes are derived from the tables, which hold owned partitions only."""
        t = self.tables
        self.pipeline.rebuild(
            t["dedup"].items(),
            t["incidents"].items(),
            t["rates"].items(),
            t["state-retention"].items(),
            t["anomalies"].items(),
            t["flaps"].items(),
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.engine.on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.engine.on_assigned(assigned)
