"""The worker's transactions: who writes them (CFN_TRANSACTIONS), their record batches, a commit.

* `worker` (the default, KIP-447): one producer per worker, `<app id>-worker-<worker id>`, and
  one transaction per commit round whatever the partition count. aiokafka sends neither request
  this needs, so cfn does (cfn/internals/): the offsets go with the group
  generation and member id (TxnOffsetCommit v3), and the group refuses a member that lost its
  partitions. A restarted worker comes back under its previous id (processors/identity.py),
  which aborts the open transaction it left at once.
* `partition`: each task has a transactional producer whose id, `<app id>-task-<p>`, is the
  same on every worker. Whoever takes p over calls `init_transactions` with that id, which
  aborts the previous owner's open transaction and fences it, so a worker that was thought dead
  cannot commit late. A commit round writes one transaction per partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.processors.settings import WorkerSettings

log = logging.getLogger("cfn.worker")

COMMIT_TIMEOUT = 30.0  # seconds; under the per-partition producers' transaction timeout (60 s)
# A shared producer's transaction timeout (CFN_TRANSACTIONS=worker), as Kafka Streams sets for
# exactly-once: the broker aborts a killed worker's open transaction after this (plus its check
# interval), and read_committed readers of the partitions it wrote wait until then.
WORKER_TXN_TIMEOUT_MS = 10_000
# Producers started at once when tasks open. Each opens two connections to the broker (the
# bootstrap and its node), and a broker's accept queue holds 50 (socket.listen.backlog.size):
# 96 producers starting together can overflow it, and the kernel retries a dropped SYN only
# after 1 s. 24 at a time stay under the queue and start 96 about as fast as all at once.
PRODUCER_STARTS = 24
# The size of the batches the engine fills itself (see Txn.builders): a batch is submitted
# when full, and aiokafka holds one queued batch per partition, so with its default of 16 KiB
# processing would wait for a broker round trip every dozen events. Below the topics'
# max.message.bytes (1 MiB).
BATCH_BYTES = 512 * 1024
_NO_HEADERS: list[tuple[str, bytes]] = []  # BatchBuilder.append wants a list; never mutated


@dataclass(eq=False)
class Txn:
    """A transactional producer and its open transaction: each task's own (CFN_TRANSACTIONS=
    partition), or one that every task of the worker shares (worker)."""

    producer: AIOKafkaProducer
    open: bool = False  # a transaction is open
    pending: list[asyncio.Future[Any]] = field(default_factory=list)  # submitted batches
    # Record batches being filled, one per output (topic, partition); submitted when full or
    # at commit. Appending to aiokafka's BatchBuilder costs a fraction of producer.send(),
    # which makes a future and metadata per record. They belong to the transaction, not to a
    # task: aiokafka queues one batch per partition and a second waits until the first is sent,
    # so tasks sharing a producer would each wait a produce round trip for their own batch of
    # one partition (every task's rate inputs of an alert type), in every commit round.
    builders: dict[tuple[str, int], internals.BatchBuilder] = field(default_factory=dict)

    async def begin(self) -> None:
        """Open a transaction unless one is open."""
        if not self.open:
            await self.producer.begin_transaction()
            self.open = True

    async def append(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """Add one record to the open batch for (topic, partition)."""
        slot = (topic, partition)
        builder = self.builders.get(slot)
        if builder is None:
            builder = self.builders[slot] = self.producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=_NO_HEADERS) is None:
            # Full: hand it to the producer and start the next (a first record always fits).
            del self.builders[slot]
            await self._submit(slot, builder)
            builder = self.builders[slot] = self.producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value, headers=_NO_HEADERS) is None:
                raise MessageSizeTooLargeError(f"a record of {len(value or b'')} bytes")

    async def _submit(self, slot: tuple[str, int], builder: internals.BatchBuilder) -> None:
        builder.close()  # no producer.send() may add to it, and the sender need not linger
        future = await self.producer.send_batch(builder, slot[0], partition=slot[1])
        self.pending.append(future)

    async def flush(self) -> None:
        """Send what the batches hold and wait until every record is acknowledged."""
        builders, self.builders = self.builders, {}
        for slot, builder in builders.items():
            await self._submit(slot, builder)
        await self.producer.flush()
        for future in self.pending:
            if not future.done():
                await future
            elif future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    async def commit(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        """Add the consumed `offsets` of `group_id` to the transaction and commit it, once
        `flush` has seen every output and changelog write acknowledged."""
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, group_id)
        await self.producer.commit_transaction()
        self.pending = []
        self.open = False

    def abandon(self) -> None:
        """The transaction failed: the errors of its submitted batches are that failure's, and
        are not to be reported again when their futures are collected."""
        for future in self.pending:
            future.add_done_callback(_consume_exception)


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


class Producers:
    """Makes the transactional producers of CFN_TRANSACTIONS, and keeps the worker's shared one
    (`worker`) while it is usable."""

    def __init__(self, settings: WorkerSettings, client_options: Mapping[str, Any]) -> None:
        self.settings = settings
        self._client_options = client_options
        self.shared: Txn | None = None  # the worker's one transaction (CFN_TRANSACTIONS=worker)

    def producer(self, name: str) -> AIOKafkaProducer:
        """A transactional producer whose id is `<app id>-<name>`."""
        s = self.settings
        producer = AIOKafkaProducer(
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
            max_batch_size=BATCH_BYTES,
        )
        internals.check_transactional(producer)
        return producer

    def for_tasks(
        self, partitions: list[int], consumer: AIOKafkaConsumer
    ) -> tuple[dict[int, Txn], list[Txn]]:
        """The transaction of each new task, and those among them still to start (a shared one
        is started once: it is dropped, not kept, when its start or its tasks fail)."""
        if self.settings.transactions == "worker":
            if self.shared is not None:
                return {p: self.shared for p in partitions}, []
            producer = self.producer(f"worker-{self.settings.worker_id}")
            internals.check_group_transactions(producer, consumer)
            internals.commit_offsets_as_member(producer, consumer)
            self.shared = Txn(producer)
            return {p: self.shared for p in partitions}, [self.shared]
        txns = {p: Txn(self.producer(f"task-{p}")) for p in partitions}
        return txns, list(txns.values())


async def start_all(producers: list[AIOKafkaProducer]) -> None:
    """Start the producers, PRODUCER_STARTS at a time."""
    slots = asyncio.Semaphore(PRODUCER_STARTS)

    async def start(producer: AIOKafkaProducer) -> None:
        async with slots:
            await producer.start()

    await asyncio.gather(*(start(producer) for producer in producers))


async def stop_producer(producer: AIOKafkaProducer) -> None:
    """Close a task's producer without waiting for records it still holds: whatever they
    belonged to is an open transaction, aborted when the partition's next owner fences
    (an idempotent producer would otherwise retry them for as long as Kafka is away)."""
    try:
        internals.abandon(producer, KafkaError("task closed"))
        await producer.stop()
    except Exception as exc:  # closing a fenced or broken producer: nothing left to save
        log.debug("producer stop: %s", type(exc).__name__)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
