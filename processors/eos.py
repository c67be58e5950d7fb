"""Faust's exactly-once mode, mended so that a repartitioning send joins the right transaction.

Faust opens one Kafka transaction per *source* partition and commits that partition's input
offsets in it, but its TransactionManager.send picks the transaction from the *destination*
partition of each send. A send keyed to another partition (our `rate-input` repartition by
alert_type) then either fails with "No transaction producer found" (the partition belongs to
another worker) or lands in a transaction that commits independently of the input offsets,
which is not exactly-once. Here a send made while an event is being processed joins the
transaction of that event's source partition, so input offsets, table changelogs and every
output of one partition commit or abort together.

Sends with no current event: changelog flushes keep Faust's rule (their partition is the
source partition). Anything else, our timer ticks, goes through the plain idempotent producer:
a tick inside a transaction would stay invisible until that partition commits, which on an
idle partition is never, so the timers would never fire. A lost or repeated tick is harmless:
handling one is idempotent.
"""

from __future__ import annotations

from typing import Any

from faust.streams import current_event
from faust.transport.consumer import TransactionManager

_PATCHED = False


def source_partition_transactions() -> None:
    """Install the mended `send` once per process."""
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
        p = self.consumer.key_partition(topic, key, partition)
        event = current_event()
        assignor = self.app.assignor
        if event is not None:
            tp = event.message.tp
            transactional_id = (
                f"{self.app.conf.id}-{assignor.group_for_topic(tp.topic)}-{tp.partition}"
            )
        elif p is not None and topic.endswith("-changelog"):
            transactional_id = f"{self.app.conf.id}-{assignor.group_for_topic(topic)}-{p}"
        else:
            transactional_id = None
        return await self.producer.send(
            topic, key, value, p, timestamp, headers, transactional_id=transactional_id
        )

    TransactionManager.send = send
    _PATCHED = True
