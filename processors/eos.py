"""Faust's exactly-once mode, mended so that a repartitioning send joins the right transaction.

Faust opens one Kafka transaction per *source* partition and commits that partition's input
offsets in it, but its TransactionManager.send picks the transaction from the *destination*
partition of each send. A send keyed to another partition (our `rate-input` repartition by
alert_type) then either fails with "No transaction producer found" (the partition belongs to
another worker) or lands in a transaction that commits independently of the input offsets,
which is not exactly-once. Here a send made while an event is being processed joins the
transaction of that event's source partition, so input offsets, table changelogs and every
output of one partition commit or abort together.

Sends with no current event: changelog flushes join the transaction of the same partition
of the table's source topic. Anything else (our timer ticks) goes through the plain producer:
a tick inside a transaction would stay invisible until that partition commits, which on an
idle partition is never, so the timers would never fire. A lost or repeated tick is harmless:
handling one is idempotent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import ProducerFenced
from faust.streams import current_event
from faust.transport.consumer import Consumer, TransactionManager

_PATCHED = False
_guard: asyncio.Lock | None = None
# changelog topic -> the source topic whose partitions its table follows (set by build_app).
CHANGELOG_SOURCES: dict[str, str] = {}


def processing_guard() -> asyncio.Lock:
    """The lock an agent holds while it handles one event, from first read to its ack.

    Faust commits on a timer, concurrently with the agents. A commit landing between an
    event's table write and its outputs would split them across two transactions: a crash in
    between then keeps the state ("already seen") and loses the output. Holding this lock for
    the whole event, acking the event before releasing it, and making commits take the same
    lock (see below) puts each event's state, outputs and input offset in one transaction.
    """
    global _guard
    if _guard is None:
        _guard = asyncio.Lock()
    return _guard


def transactional_id_for(app_id: str, partition: int) -> str:
    """One transactional id per partition number, stable across processes.

    Faust puts its "topic group" number in the id, and that number is an enumeration that can
    differ between two processes of the same app (it depends on which topics existed at the
    first assignment). A restarted worker then fails to fence its dead predecessor's open
    transactions, recovery waits for them to time out, and its own fresh transactions time out
    meanwhile. All cfn topics are co-partitioned, so the partition number alone names a task.
    """
    return f"{app_id}-p{partition}"


def source_partition_transactions() -> None:
    """Install the mended `send` and the guarded `commit` once per process."""
    global _PATCHED
    if _PATCHED:
        return

    async def send(
        self: Any,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        # Faust's key_partition drops an explicit partition when its consumer has no metadata
        # for the topic yet; an explicit partition (our per-partition ticks) must win.
        p = partition if partition is not None else self.consumer.key_partition(topic, key)
        event = current_event()
        if event is not None:
            transactional_id = transactional_id_for(self.app.conf.id, event.message.tp.partition)
        elif p is not None and topic in CHANGELOG_SOURCES:
            # Faust would use the changelog topic's own group, whose transaction never gets
            # offsets to commit: it times out and every table write in it is aborted. The
            # write belongs with partition p of the table's source topic.
            transactional_id = transactional_id_for(self.app.conf.id, p)
        else:
            transactional_id = None
        return await self.producer.send(
            topic, key, value, p, timestamp, headers, transactional_id=transactional_id
        )

    original_commit = Consumer.commit

    async def commit(self: Any, topics: Any = None, start_new_transaction: bool = True) -> Any:
        if not self.app.in_transaction:
            return await original_commit(self, topics, start_new_transaction)
        async with processing_guard():
            # Table writes wait in Faust's send buffer; flush them into the open transactions
            # before those commit (Faust only flushes here in at-least-once mode).
            await self.app.producer.buffer.flush()
            return await original_commit(self, topics, start_new_transaction)

    async def commit_transactions(
        self: Any, offsets: Any, start_new_transaction: bool = True
    ) -> bool:
        by_transactional_id: dict[str, dict[Any, int]] = {}
        for tp, offset in offsets.items():
            tid = transactional_id_for(self.app.conf.id, tp.partition)
            by_transactional_id.setdefault(tid, {})[tp] = offset
        if by_transactional_id:
            try:
                await self.producer.commit_transactions(
                    by_transactional_id,
                    self.app.conf.id,
                    start_new_transaction=start_new_transaction,
                )
            except ProducerFenced as exc:
                # Another process owns these partitions now; stop rather than go on
                # producing into transactions that can never commit.
                await self.app.crash(exc)
        return True

    TransactionManager.send = send
    TransactionManager.commit = commit_transactions
    TransactionManager.transactional_id_format = "{group_id}-p{tpg.partition}"
    Consumer.commit = commit
    _PATCHED = True
