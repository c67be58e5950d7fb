"""The durable write: one acks=all send per request, bounded by the ack timeout.

The hot path is cheaper than `AIOKafkaProducer.send` by the work a webhook does not need each
time (measured per acknowledged record, see `KafkaSink.send`): it knows each topic's partitions
from the last metadata update, places the key with `schemas.partition`, and bounds the wait for
the acknowledgement with one shared sweeper instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.structs import TopicPartition

from schemas.partition import default_partitioner, partition_for

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# A record of key + value + headers + this much stays under max_request_size with room to spare
# (a v2 record adds at most ~30 bytes of varints and the batch header 61); anything closer to
# the limit goes through AIOKafkaProducer.send, which measures it exactly.
_SIZE_MARGIN = 1024


class Outcome(Enum):
    """How a durable write ended; the HTTP layer maps each to a status code."""

    ACKED = "acked"
    TIMEOUT = "timeout"  # no ack within CFN_INGEST_ACK_TIMEOUT: retriable, 503
    RETRIABLE = "retriable"  # broker said try again (leader moving, not enough replicas): 503
    TOO_LARGE = "too_large"  # the broker will never take this record: 413
    PERMANENT = "permanent"  # misconfiguration (authorization, unknown topic): 500


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    error: str | None = None  # the Kafka error class name; never payload or secret content


ACKED = SendResult(Outcome.ACKED)


class AckTimeout(KafkaTimeoutError):  # type: ignore[misc]  # aiokafka is untyped
    """No acknowledgement within the ack timeout (set by the sweeper on the record's future)."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Marks a failure of a record nobody awaits any more as seen (no "never retrieved" log).
    if not future.cancelled():
        future.exception()


def classify(exc: BaseException) -> Outcome:
    """Tell retriable errors from permanent ones, using aiokafka's own `retriable` flag."""
    if isinstance(exc, asyncio.TimeoutError | KafkaTimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, MessageSizeTooLargeError):
        return Outcome.TOO_LARGE
    if isinstance(exc, KafkaError):
        return Outcome.RETRIABLE if exc.retriable else Outcome.PERMANENT
    if isinstance(exc, OSError):
        return Outcome.RETRIABLE  # a connection that cannot be made now may work later
    return Outcome.PERMANENT


class KafkaSink:
    """Owns the idempotent acks=all producer; `send` returns only once the broker has the bytes.

    It trades throughput for latency honesty: every request awaits its own ack (no linger by
    default), so a 2xx always means "durable", and concurrent requests still share batches.

    Args:
        bootstrap: the Kafka bootstrap servers.
        ack_timeout: seconds from `send` to its answer at most (plus up to two sweep intervals).
        linger_ms, compression, max_request_size: the producer's settings.
        sweep_interval: how often the sweeper fails records whose ack is overdue.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        ack_timeout: float,
        linger_ms: int = 0,
        compression: str = "lz4",
        max_request_size: int = 2 * 1024 * 1024,
        sweep_interval: float = 0.02,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.sweep_interval = sweep_interval
        self._max_fast_size = max_request_size - _SIZE_MARGIN
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            compression_type=None if compression == "none" else compression,
            linger_ms=linger_ms,
            max_request_size=max_request_size,
            request_timeout_ms=max(1000, int(ack_timeout * 1000)),
            client_id="cfn-ingest",
            partitioner=default_partitioner,  # aiokafka's placement, a faster murmur2
        )
        # aiokafka's accumulator (AIOKafkaProducer.send ends in its add_message); None if a
        # future aiokafka renames it, and then every send takes the public path.
        accumulator = getattr(self._producer, "_message_accumulator", None)
        self._accumulator: Any = accumulator if hasattr(accumulator, "add_message") else None
        # topic -> its partitions in order, learnt by its first send, relearnt on each metadata
        # update (a topic that grows is followed).
        self._routes: dict[str, tuple[TopicPartition, ...]] = {}
        # (deadline, future) of records sent and not yet acknowledged, every deadline send time
        # + ack_timeout: in deadline order (nearly all), and the few whose enqueue had to wait.
        self._pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._waited: list[tuple[float, asyncio.Future[Any]]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._producer.client.cluster.add_listener(self._metadata_updated)
        self._sweeper = asyncio.create_task(self._sweep())
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._producer.client.cluster.remove_listener(self._metadata_updated)
            await self._producer.stop()  # flushes: the sweeper still bounds the waits
            self._started = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> SendResult:
        """Write one record and wait for the acks=all acknowledgement.

        Returns:
            ACKED only when the broker acknowledged; otherwise the failure's classification.
        """
        try:
            routes = self._routes.get(topic)
            size = len(value) + len(key)
            for name, data in headers:
                size += len(name) + len(data)
            if routes is None or self._accumulator is None or size > self._max_fast_size:
                await self._send_public(topic, key, value, headers)
                return ACKED
            started = time.monotonic()
            future = await self._accumulator.add_message(
                routes[partition_for(key, len(routes))], key, value, self.ack_timeout, None, headers
            )
            if not future.done():
                self._watch(future, started)
            await future
        except Exception as exc:
            outcome = classify(exc)
            log.warning(
                "kafka write to %s failed: %s (%s)", topic, type(exc).__name__, outcome.value
            )
            return SendResult(outcome, type(exc).__name__)
        return ACKED

    def _watch(self, future: asyncio.Future[Any], started: float) -> None:
        """Have the sweeper fail `future` if it is still pending at `started` + ack_timeout.

        Raises:
            AckTimeout: the enqueue itself (waiting for room in a full batch) took that long.
        """
        deadline = started + self.ack_timeout
        waited = time.monotonic() - started
        if waited < self.sweep_interval:
            # Enqueued at once, as nearly always: entries arrive in deadline order, give or take
            # less than one sweep, so the sweeper only ever looks at the oldest.
            self._pending.append((deadline, future))
        elif waited < self.ack_timeout:
            # The enqueue waited for room while later requests went ahead: kept apart, so its
            # deadline is not hidden behind theirs.
            self._waited.append((deadline, future))
        else:
            future.add_done_callback(_retrieve)  # nobody awaits it now
            raise AckTimeout

    async def _send_public(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """The public path: waits for the topic's metadata and checks the size exactly."""
        async with asyncio.timeout(self.ack_timeout):
            future = await self._producer.send(topic, value=value, key=key, headers=headers)
            await future
        if topic not in self._routes:
            partitions = self._producer.client.cluster.partitions_for_topic(topic)
            if partitions:
                self._routes[topic] = self._routes_for(topic, partitions)

    @staticmethod
    def _routes_for(topic: str, partitions: Iterable[int]) -> tuple[TopicPartition, ...]:
        return tuple(TopicPartition(topic, partition) for partition in sorted(partitions))

    def _metadata_updated(self, cluster: Any) -> None:
        # Partitions may have been added: relearn each topic's from the new metadata.
        for topic in list(self._routes):
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                self._routes[topic] = self._routes_for(topic, partitions)
            else:  # gone from the metadata: the public path waits for it again
                del self._routes[topic]

    async def _sweep(self) -> None:
        """Fail every record still unacknowledged at its deadline; drop acknowledged ones."""
        pending = self._pending
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = time.monotonic()
            while pending:
                deadline, future = pending[0]
                if deadline > now and not future.done():
                    break
                pending.popleft()
                if not future.done():
                    # aiokafka skips a future that is already done when the ack comes later.
                    future.set_exception(AckTimeout())
            if self._waited:
                waiting = []
                for deadline, future in self._waited:
                    if future.done():
                        continue
                    if deadline <= now:
                        future.set_exception(AckTimeout())
                    else:
                        waiting.append((deadline, future))
                self._waited = waiting

    async def ready(self, topic: str, timeout: float = 2.0) -> bool:
        """True when the producer can reach the cluster and `topic` exists there."""
        if not self._started:
            return False
        try:
            async with asyncio.timeout(timeout):
                # A fresh metadata round trip: cached metadata would say "ready" while the
                # broker is down.
                cluster = await self._producer.client.fetch_all_metadata()
        except Exception:  # any failure to learn metadata means "not ready"
            return False
        return topic in cluster.topics()
