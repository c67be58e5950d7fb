"""The worker's engine: an exactly-once consume-process-produce loop over aiokafka.

Work is split into *tasks*, one per partition number p. Task p owns `cfn.raw` p and
`cfn.rate-input` p (the range assignor gives both to the same worker, the topics having the
same partition count) and the state of p in its changelog-backed tables. Everything a
transaction covers between two commits (outputs, changelog writes, consumed offsets) commits or
aborts together, so a read_committed subscriber sees each input's effects exactly once or not
at all. Who writes the transactions is CFN_TRANSACTIONS:

* `worker` (the default, KIP-447): one producer per worker, `<app id>-worker-<worker id>`, and
  one transaction per commit round whatever the partition count. aiokafka sends neither request
  this needs, so cfn does (cfn/protocol.py, cfn/internals.py): the offsets go with the group
  generation and member id (TxnOffsetCommit v3), and the group refuses a member that lost its
  partitions; a new owner reads the committed offsets once they are stable (OffsetFetch v7),
  then restores the changelogs once no transaction is open on them, and a worker that comes
  back after generations without it restores everything it holds. A restarted worker comes
  back under its previous id (processors/identity.py), which aborts the open transaction it
  left at once.
* `partition`: each task has a transactional producer whose id, `<app id>-task-<p>`, is the
  same on every worker. Whoever takes p over calls `init_transactions` with that id, which
  aborts the previous owner's open transaction and fences it, so a worker that was thought dead
  cannot commit late. A commit round writes one transaction per partition.

Every table writes to the app's one changelog topic, `<app id>-changelog`, keyed
`<table>:<key>`: its partition p holds task p's state, and a transaction of task p writes one
partition of it whatever the number of tables (one topic a table multiplied the partitions the
broker creates, and each transaction's markers, by six). Workers of earlier versions wrote one
changelog per table: a partition whose shared changelog does not say it was migrated is restored
from those once and written whole to the shared one with a marker, in its first commit.

A rebalance commits every open transaction before the partitions are handed back; a task
that is new to this worker fences, reads the group's committed offsets, restores its state from
the changelogs (read_committed, to the last stable offset) and seeks, in that order. A task
whose transaction fails is dropped whole (state included), with every task that shares the
transaction, and the group is asked to rebalance: they come back through the same restore,
never with half-applied in-memory state.

Why not faust-streaming's exactly-once: measured here, faust-streaming 0.15.3 lost 14-34 % of
the notifications across a SIGKILL and crashed a joining worker with ProducerFenced (see the
README, "Exactly once"). The logic is unchanged and Faust-free either way (`pipeline.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import IllegalOperation, KafkaError, MessageSizeTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord, TopicPartition

from cfn import internals
from cfn.access import AccessDenied, denial
from cfn.config import OUTPUT_ROLES, changelog_topic, legacy_changelog_topic
from cfn.partition import partition_for
from cfn.processors.dedup import partition_of_seen
from cfn.processors.identity import new_worker_id
from cfn.processors.pipeline import Output, Pipeline, header_map
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio

log = logging.getLogger("cfn.worker")

MAX_RECORDS = 2000  # per poll; bounds the work between two checks of the timers
# How long the broker may hold the worker's fetch when it has nothing new for it (the client's
# default is 500 ms). aiokafka keeps one fetch in flight per broker, for every partition it is
# not still holding records of: raw and repartition alike. Measured with 8 bursts of 6 s at
# 2,950 POST/s after 3 s idle (docs/reliability.md), the median burst's end-to-end p99 was
# 775 and 1,081 ms at 500 ms, 418 ms at 100 ms, and 303 and 326 ms at 50 ms. When idle, it
# costs the broker 20 empty fetches a second per worker.
FETCH_MAX_WAIT_MS = 50
COMMIT_TIMEOUT = 30.0  # seconds; under the per-partition producers' transaction timeout (60 s)
# A shared producer's transaction timeout (CFN_TRANSACTIONS=worker), as Kafka Streams sets for
# exactly-once: the broker aborts a killed worker's open transaction after this (plus its check
# interval), and read_committed readers of the partitions it wrote wait until then.
WORKER_TXN_TIMEOUT_MS = 10_000
SETTLE_TIMEOUT = 25.0  # seconds: that timeout, the broker's 10 s check interval, and a margin
RESTORE_TIMEOUT = 600.0  # seconds for the changelogs of the partitions assigned at once
ASSIGN_RETRY = 1.0  # seconds between two attempts to open newly assigned tasks
# Producers started at once when tasks open. Each opens two connections to the broker (the
# bootstrap and its node), and a broker's accept queue holds 50 (socket.listen.backlog.size):
# 96 producers starting together overflowed it here (TcpExtListenOverflows), and the kernel
# retries a dropped SYN after 1 s, which a start over 96 partitions then waited for. 24 at a
# time started 96 in 0.13-0.17 s; all at once took 0.10-0.25 s, or over 1 s on an overflow.
PRODUCER_STARTS = 24
METADATA_WAIT = 30.0  # seconds for new topics to reach every broker's metadata
# The shared changelog's record saying that its partition holds everything the per-table
# changelogs of an earlier version held: from then on they are not read for that partition.
MIGRATED_KEY = b"cfn:migrated"
MIGRATED_VALUE = b'{"from":"per-table changelogs","format":1}'
_NO_HEADERS: list[tuple[str, bytes]] = []  # BatchBuilder.append wants a list; never mutated


def _partition_of(value: Any) -> int:
    """Every table value names its partition: {"p": p, ...}, a dedup value (an int, or the list
    of format 1, see processors/dedup.py), or an object with a `p` attribute."""
    kind = type(value)
    if kind is dict:
        return int(value["p"])
    if kind is int or kind is list:
        return partition_of_seen(value)
    return int(value.p)


def _decode_json(data: bytes) -> Any:
    return jsonio.loads(data)


class ChangelogTable(dict[str, Any]):
    """A dict that remembers, per partition, which keys changed since the last drain.

    The pipeline reads and writes it like any mapping; the engine drains the changed keys into
    the changelog inside the partition's transaction (one record per key per commit, however
    often the key changed), and loads it back from the changelog on restore. Every table shares
    the app's one changelog topic, its records keyed `<name>:<key>` (`prefix` + key). Reads are
    plain dict reads (a MutableMapping's Python-level `get` was ~4% of the worker's CPU); writes
    go through `__setitem__`/`__delitem__`, and the bulk writers that would bypass them refuse.
    """

    def __init__(
        self,
        name: str,
        encode: Callable[[Any], bytes] = jsonio.dumps,
        decode: Callable[[bytes], Any] = _decode_json,
    ) -> None:
        super().__init__()
        if ":" in name:
            raise ValueError(f"a table name cannot hold ':' (it ends the key prefix): {name!r}")
        self.name = name
        self.prefix = f"{name}:".encode()
        # The changelog format of this table's values: `decode` reads every format it ever had.
        self.encode = encode
        self.decode = decode
        self._changed: dict[int, set[str]] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._mark(key, value)

    def __delitem__(self, key: str) -> None:
        self._mark(key, dict.pop(self, key))

    def _mark(self, key: str, value: Any) -> None:
        partition = _partition_of(value)
        changed = self._changed.get(partition)
        if changed is None:  # not setdefault: that builds a set on every write
            changed = self._changed[partition] = set()
        changed.add(key)

    def _untracked(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("ChangelogTable: write keys one by one (t[k] = v, del t[k])")

    pop = popitem = setdefault = update = clear = __ior__ = _untracked

    def drain(self, partition: int) -> list[tuple[str, Any]]:
        """(key, value or None for a deletion) for every key of `partition` changed since."""
        keys = self._changed.pop(partition, None)
        if not keys:
            return []
        get = self.get
        return [(key, get(key)) for key in sorted(keys)]

    def load(self, key: str, value: Any) -> None:
        """Apply one changelog record (restore): not a change to write back."""
        if value is None:
            dict.pop(self, key, None)
        else:
            dict.__setitem__(self, key, value)

    def touch(self, partitions: set[int]) -> None:
        """Mark every key of `partitions` changed, so that the next drains write them all (a
        partition migrated from the per-table changelogs is written whole to the shared one)."""
        for key, value in self.items():
            partition = _partition_of(value)
            if partition in partitions:
                changed = self._changed.get(partition)
                if changed is None:
                    changed = self._changed[partition] = set()
                changed.add(key)

    def drop(self, partitions: set[int]) -> None:
        """Forget the state of partitions this worker no longer owns (or must restore)."""
        for key in [k for k, v in self.items() if _partition_of(v) in partitions]:
            dict.__delitem__(self, key)
        for partition in partitions:
            self._changed.pop(partition, None)


@dataclass(eq=False)
class Txn:
    """A transactional producer and its open transaction: each task's own (CFN_TRANSACTIONS=
    partition), or one that every task of the worker shares (worker)."""

    producer: AIOKafkaProducer
    open: bool = False  # a transaction is open
    pending: list[asyncio.Future[Any]] = field(default_factory=list)  # submitted batches
    # Record batches being filled, one per output (topic, partition); submitted when full or
    # at commit. Appending to aiokafka's BatchBuilder costs ~1.5 us a record, against ~20 us
    # for producer.send(), which makes a future and metadata per record. They belong to the
    # transaction, not to a task: aiokafka queues one batch per partition and a second waits
    # until the first is sent, so tasks sharing a producer that each submitted their own batch
    # for one partition (every task's rate inputs of an alert type) waited for a produce
    # round trip apiece, in every commit round.
    builders: dict[tuple[str, int], BatchBuilder] = field(default_factory=dict)


@dataclass
class Task:
    """The unit of ownership and of state: one partition number."""

    partition: int
    txn: Txn
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    next_raw: int = -1  # the next raw offset to process; smaller ones are re-fetches
    next_rate: int = -1  # the same for rate-input

    @property
    def producer(self) -> AIOKafkaProducer:
        return self.txn.producer


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
        # The per-table changelogs of an earlier version still in the cluster, found at start:
        # table -> (topic, partition count). Empty unless upgrading.
        self._legacy: dict[str, tuple[str, int]] = {}
        self._migrating: set[int] = set()  # partitions restored from them, not yet committed
        self.denied: AccessDenied | None = None  # Kafka refused a permission: the worker stops
        self._stop: asyncio.Event | None = None
        self._client_options = settings.security.client_options()  # one TLS context for all
        self.tasks: dict[int, Task] = {}
        self.shared: Txn | None = None  # the worker's one transaction (CFN_TRANSACTIONS=worker)
        self._generation = -2  # the group generation of the current assignment
        # Reads high watermarks for `_settle` (CFN_TRANSACTIONS=worker), from start to close.
        self._probe: AIOKafkaConsumer | None = None
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
            bootstrap_servers=s.bootstrap,
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
        starts = [self._consumer.start()]
        if s.transactions == "worker":
            self._probe = self._reader("read_uncommitted")
            starts.append(self._probe.start())  # its start is ~1 s: not on the ready path
        await asyncio.gather(*starts)
        internals.check_consumer(self._consumer)
        self.copartitioned = await self._copartitioned()
        self._legacy = await self._legacy_changelogs()
        if self._probe is not None:
            # Assigned (and paused: it never fetches) so that its client keeps the changelog's
            # metadata; an ask for the offsets of a topic it does not track took ~0.6 s.
            changelogs = [TopicPartition(self.changelog, p) for p in range(s.partitions)]
            self._probe.assign(changelogs)
            self._probe.pause(*changelogs)
        self.pipeline.flap_marks = self.copartitioned
        if s.transactions == "worker":
            await self._start_shared()
        self._consumer.subscribe([self.raw_topic, self.rate_topic], listener=_Listener(self))

    async def _start_shared(self) -> None:
        """Start the worker's producer before joining the group. Its init_transactions aborts
        the transaction that a killed earlier worker under the same id (processors/identity.py)
        left open: read_committed readers of the partitions it wrote go on now, not once the
        dead member's session has expired and the partitions are assigned. A failure other
        than a refusal is left to the first assignment, which starts a producer anyway."""
        _, fresh = self._txns_for([])
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT):
                await _start_all([txn.producer for txn in fresh])
        except Exception as exc:
            await asyncio.gather(*(self._stop_producer(txn.producer) for txn in fresh))
            self.shared = None
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

    async def _legacy_changelogs(self) -> dict[str, tuple[str, int]]:
        """The per-table changelogs of an earlier version that this worker can see."""
        cluster = await internals.fetch_metadata(self.consumer)
        found = {}
        for table in self.tables:
            topic = legacy_changelog_topic(self.settings.app_id, table)
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
        return found

    def _reader(self, isolation_level: str, **options: Any) -> AIOKafkaConsumer:
        """A consumer outside the group, for the changelogs (restore, high watermarks)."""
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            **self._client_options,
            group_id=None,
            enable_auto_commit=False,
            isolation_level=isolation_level,
            **options,
        )

    def _producer(self, name: str) -> AIOKafkaProducer:
        """A transactional producer whose id is `<app id>-<name>`."""
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            **self._client_options,
            client_id=f"{s.app_id}-{name}",
            transactional_id=f"{s.app_id}-{name}",
            # A worker's transactional id comes back only with a restart on its machine (see
            # processors/identity.py); otherwise the broker, not a successor, aborts a killed
            # worker's open transaction: after this.
            transaction_timeout_ms=(
                WORKER_TXN_TIMEOUT_MS if s.transactions == "worker" else 60_000
            ),
            acks="all",
            enable_idempotence=True,
            compression_type=None if s.compression == "none" else s.compression,
            # The size of the batches the engine fills itself (see Txn.builders): a batch is
            # submitted when full, and aiokafka holds one queued batch per partition, so small
            # ones (its default is 16 KiB) made processing wait for a broker round trip every
            # dozen events. Below the topics' max.message.bytes (1 MiB).
            max_batch_size=512 * 1024,
        )
        internals.check_transactional(producer)
        return producer

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
        if self._probe is not None:
            await self._probe.stop()
        txns = {t.txn for t in self.tasks.values()} | ({self.shared} if self.shared else set())
        await asyncio.gather(*(self._stop_producer(txn.producer) for txn in txns))
        self.tasks.clear()
        self.shared = None

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        """Close a task's producer without waiting for records it still holds: whatever they
        belonged to is an open transaction, aborted when the partition's next owner fences
        (an idempotent producer would otherwise retry them for as long as Kafka is away)."""
        try:
            internals.abandon(producer, KafkaError("task closed"))
            await producer.stop()
        except Exception as exc:  # closing a fenced or broken producer: nothing left to save
            log.debug("producer stop: %s", type(exc).__name__)

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
        lag = 0
        for partition in sorted(self.tasks):
            # Every owned partition, idle or not: its tick record keeps the repartition topic
            # moving, so a group's committed offsets reach past the last transaction marker
            # (skipping idle partitions left them one behind the end offsets for good).
            await self._guarded(partition, self._tick_task, partition, now)
            task = self.tasks.get(partition)
            if task is None:
                continue
            high = self.consumer.highwater(TopicPartition(self.raw_topic, partition))
            if high is not None and task.next_raw >= 0:
                lag += max(0, high - task.next_raw)
        self.pipeline.metrics.consumer_lag.labels(self.raw_topic).set(lag)
        self.pipeline.publish_gauges()

    async def _tick_task(self, partition: int, now: float) -> None:
        task = self.tasks[partition]
        await self._begin(task)
        await self._send(task, self.pipeline.on_tick(now, partition))

    async def _begin(self, task: Task) -> None:
        txn = task.txn
        if not txn.open:
            await txn.producer.begin_transaction()
            txn.open = True

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
        txn = task.txn
        slot = (topic, partition)
        builder = txn.builders.get(slot)
        if builder is None:
            builder = txn.builders[slot] = txn.producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=_NO_HEADERS) is None:
            # Full: hand it to the producer and start the next (a first record always fits).
            del txn.builders[slot]
            await self._submit(txn, slot, builder)
            builder = txn.builders[slot] = txn.producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value, headers=_NO_HEADERS) is None:
                raise MessageSizeTooLargeError(f"a record of {len(value or b'')} bytes")

    async def _submit(self, txn: Txn, slot: tuple[str, int], builder: BatchBuilder) -> None:
        builder.close()  # no producer.send() may add to it, and the sender need not linger
        future = await txn.producer.send_batch(builder, slot[0], partition=slot[1])
        txn.pending.append(future)

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
        for task in tasks:
            p = task.partition
            await self._send(task, self.pipeline.drain_rate_inputs(p))
            for table in self.tables.values():
                prefix = table.prefix
                for key, value in table.drain(p):
                    encoded = None if value is None else table.encode(value)
                    await self._append(task, changelog, p, prefix + key.encode(), encoded)
            if p in self._migrating:
                await self._append(task, changelog, p, MIGRATED_KEY, MIGRATED_VALUE)
        txn = tasks[0].txn
        builders, txn.builders = txn.builders, {}
        for slot, builder in builders.items():
            await self._submit(txn, slot, builder)
        await txn.producer.flush()
        for future in txn.pending:
            if not future.done():
                await future
            elif future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        offsets: dict[TopicPartition, int] = {}
        for task in tasks:
            offsets.update(task.offsets)
        # Every output and changelog write is acknowledged: now the offsets, atomically.
        if offsets:
            await txn.producer.send_offsets_to_transaction(offsets, self.settings.app_id)
        await txn.producer.commit_transaction()
        txn.pending = []
        for task in tasks:
            task.offsets = {}
            if task.partition in self._migrating:
                self._migrating.discard(task.partition)
                log.info("partition %d migrated to %s", task.partition, self.changelog)
        txn.open = False

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
            for future in task.txn.pending:  # their errors are this one's
                future.add_done_callback(_consume_exception)
            if self.shared is task.txn:
                self.shared = None  # not kept: `_release` closes it
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
        self._migrating -= partitions
        for partition in partitions:
            self.pipeline.forget_rate_inputs(partition)
        for table in self.tables.values():
            table.drop(partitions)
        txns.discard(self.shared)
        await asyncio.gather(*(self._stop_producer(txn.producer) for txn in txns))

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
                        "could not open tasks %s (%s); asking the group to rebalance",
                        partitions,
                        type(exc).__name__,
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

    def _txns_for(self, partitions: list[int]) -> tuple[dict[int, Txn], list[Txn]]:
        """The transaction of each new task, and those among them still to start (a shared one
        is started once: it is dropped, not kept, when its start or its tasks fail)."""
        if self.settings.transactions == "worker":
            if self.shared is not None:
                return {p: self.shared for p in partitions}, []
            producer = self._producer(f"worker-{self.settings.worker_id}")
            internals.check_group_transactions(producer, self.consumer)
            internals.commit_offsets_as_member(producer, self.consumer)
            self.shared = Txn(producer)
            return {p: self.shared for p in partitions}, [self.shared]
        txns = {p: Txn(self._producer(f"task-{p}")) for p in partitions}
        return txns, list(txns.values())

    async def _open_tasks(self, partitions: list[int]) -> None:
        """Fence, find the committed offsets, restore, seek: the order matters (see the module
        docstring)."""
        txns, fresh = self._txns_for(partitions)
        tasks = {p: Task(p, txn) for p, txn in txns.items()}
        try:
            # start() runs init_transactions: the previous owner's open transaction under the
            # same id is aborted (its offsets and changelog writes with it) and it is fenced.
            async with asyncio.timeout(COMMIT_TIMEOUT):
                await _start_all([txn.producer for txn in fresh])
                # Stable offsets: a transaction of the previous owner that holds offsets of
                # these partitions has ended (one producer per worker is fenced only by the
                # group generation, so its last transaction may still be under way).
                committed = await self._committed(partitions)
            for table in self.tables.values():
                table.drop(set(partitions))
            async with asyncio.timeout(RESTORE_TIMEOUT):
                await self._restore(partitions)
            self._seek(tasks, committed)
        except BaseException:
            await asyncio.gather(*(self._stop_producer(txn.producer) for txn in fresh))
            if self.shared in fresh:
                self.shared = None
            for table in self.tables.values():
                table.drop(set(partitions))
            self._migrating.difference_update(partitions)
            raise
        self.tasks.update(tasks)

    async def _committed(self, partitions: list[int]) -> dict[TopicPartition, int]:
        tps = [TopicPartition(t, p) for p in partitions for t in (self.raw_topic, self.rate_topic)]
        committed = await internals.fetch_committed(self.consumer, tps)
        return {tp: committed.get(tp, -1) for tp in tps}

    def _seek(self, tasks: dict[int, Task], committed: dict[TopicPartition, int]) -> None:
        """Position the consumer at the group's committed offsets of the new tasks.

        A partition without any is left to the consumer, which finds none either and starts at
        the beginning (auto_offset_reset="earliest"). An explicit seek_to_beginning waits for a
        round of the fetcher, a 0.5 s long poll on empty partitions: one per partition made a
        first start over 12 empty partitions take 12 s to ready, and one for all of them took
        0.36 s over 96.
        """
        for tp, offset in committed.items():
            if offset >= 0:
                self.consumer.seek(tp, offset)
                if tp.topic == self.raw_topic:
                    tasks[tp.partition].next_raw = offset
                else:
                    tasks[tp.partition].next_rate = offset

    async def _restore(self, partitions: list[int]) -> None:
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
        reader = self._reader("read_committed", auto_offset_reset="earliest", fetch_max_wait_ms=50)
        await reader.start()
        try:
            loaded = await _read_to_ends(reader, await self._stable_ends(reader, tps), load)
            if self._legacy:
                loaded += await self._restore_legacy(reader, partitions, written)
        finally:
            await reader.stop()
        if unknown:
            log.warning("%d changelog records of unknown tables ignored", unknown)
        log.info("restored %d changelog records for partitions %s", loaded, partitions)

    async def _restore_legacy(
        self,
        reader: AIOKafkaConsumer,
        partitions: list[int],
        written: set[int],
    ) -> int:
        """Load the partitions not migrated yet from the per-table changelogs, and mark all
        their state changed so that their first commit writes it, and the marker, to the
        shared changelog. Returns the records read."""
        # A partition is migrated in the transaction of its first write to the shared
        # changelog (the marker with it): one with any record there has nothing to read here.
        todo = [p for p in partitions if p not in written]
        if not todo:
            return 0
        by_topic = {topic: self.tables[table] for table, (topic, _n) in self._legacy.items()}
        tps = [
            TopicPartition(topic, p)
            for topic, count in self._legacy.values()
            for p in todo
            if p < count
        ]

        def load(record: ConsumerRecord[Any, Any]) -> None:
            table = by_topic[record.topic]
            table.load(
                record.key.decode(), None if record.value is None else table.decode(record.value)
            )

        loaded = (
            await _read_to_ends(reader, await self._stable_ends(reader, tps), load) if tps else 0
        )
        moved = set(todo)
        for table in self.tables.values():
            table.touch(moved)
        self._migrating.update(todo)
        log.info(
            "read %d records of the per-table changelogs for partitions %s, to be moved to %s",
            loaded,
            todo,
            self.changelog,
        )
        return loaded

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
        a successor's init_transactions. Its offsets are settled by then (`_committed`), but its
        markers reach the changelog partitions one by one, and a restore that stopped at the
        last stable offset before them would miss state its committed offsets account for.
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


async def _start_all(producers: list[AIOKafkaProducer]) -> None:
    """Start the producers, PRODUCER_STARTS at a time."""
    slots = asyncio.Semaphore(PRODUCER_STARTS)

    async def start(producer: AIOKafkaProducer) -> None:
        async with slots:
            await producer.start()

    await asyncio.gather(*(start(producer) for producer in producers))


async def _read_to_ends(
    reader: AIOKafkaConsumer,
    ends: dict[TopicPartition, int],
    load: Callable[[ConsumerRecord[Any, Any]], None],
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


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.engine.on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.engine.on_assigned(assigned)
