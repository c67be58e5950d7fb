"""The durable write: one acks=all send per request, bounded by the ack timeout."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from schemas.partition import default_partitioner

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


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
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        ack_timeout: float,
        linger_ms: int = 0,
        compression: str = "lz4",
        max_request_size: int = 2 * 1024 * 1024,
    ) -> None:
        self.ack_timeout = ack_timeout
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
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._producer.stop()
            self._started = False

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> SendResult:
        """Write one record and wait for the acks=all acknowledgement.

        Returns:
            ACKED only when the broker acknowledged; otherwise the failure's classification.
        """
        try:
            async with asyncio.timeout(self.ack_timeout):
                future = await self._producer.send(topic, value=value, key=key, headers=headers)
                await future
        except Exception as exc:
            outcome = classify(exc)
            log.warning(
                "kafka write to %s failed: %s (%s)", topic, type(exc).__name__, outcome.value
            )
            return SendResult(outcome, type(exc).__name__)
        return SendResult(Outcome.ACKED)

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
