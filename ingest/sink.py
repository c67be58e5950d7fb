"""The durable write: one acks=all send per request, bounded by the ack timeout.

The hot path is cheaper than `AIOKafkaProducer.send` by the work a webhook does not need each
time (measured per acknowledged record, see `KafkaSink.send`): it knows each topic's partitions
from the last metadata update, places the key with `cfn.partition`, and bounds the wait for
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
from aiokafka import errors as Errors
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.partition import default_partitioner, partition_for
from cfn.security import PLAINTEXT, KafkaSecurity

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
    RECOVERING = "recovering"  # the producer is broken or being replaced; a new one cures it: 503
    TOO_LARGE = "too_large"  # the broker will never take this record: 413
    PERMANENT = "permanent"  # an operator must act (authorization, configuration): 500


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    error: str | None = None  # the Kafka error class name; never payload or secret content


ACKED = SendResult(Outcome.ACKED)
REPLACING = SendResult(Outcome.RECOVERING, "ProducerReplacing")


class AckTimeout(KafkaTimeoutError):  # type: ignore[misc]  # aiokafka is untyped
    """No acknowledgement within the ack timeout (set by the sweeper on the record's future)."""


class ProducerRetired(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The record's producer was replaced before the record was acknowledged."""

    retriable = True


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Marks a failure of a record nobody awaits any more as seen (no "never retrieved" log).
    if not future.cancelled():
        future.exception()


# What an operator must fix: these are never cured by retrying or by a new producer.
_OPERATOR_ERRORS: tuple[type[BaseException], ...] = (
    Errors.TopicAuthorizationFailedError,
    Errors.ClusterAuthorizationFailedError,
    Errors.TransactionalIdAuthorizationFailed,
    Errors.SaslAuthenticationFailed,
    Errors.UnsupportedSaslMechanismError,
    Errors.UnsupportedVersionError,
    Errors.UnsupportedForMessageFormatError,
    Errors.InvalidTopicError,
    Errors.InvalidRequiredAcksError,
    Errors.PolicyViolationError,
    Errors.InvalidConfigurationError,
    Errors.InvalidTimestampError,  # this host's clock is far off the broker's
    Errors.CorruptRecordException,
)
_TOO_LARGE_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    Errors.RecordListTooLargeError,
)


def classify(exc: BaseException) -> Outcome:
    """What a failed write means for the client and for the producer.

    Retriable errors (aiokafka's own `retriable` flag, timeouts, connection errors) are 503s. The
    few an operator must fix are 500s, a record the broker will never take a 413. Any other
    Kafka error leaves an idempotent producer unusable (OutOfOrderSequenceNumber,
    UnknownProducerId, InvalidProducerEpoch: aiokafka has no KIP-360 epoch bump) and is cured by
    a new producer: RECOVERING, a 503 while the sink replaces it. An exception that is not
    Kafka's is a 500 that names it.
    """
    if isinstance(exc, asyncio.TimeoutError | KafkaTimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, _TOO_LARGE_ERRORS):
        return Outcome.TOO_LARGE
    if isinstance(exc, _OPERATOR_ERRORS):
        return Outcome.PERMANENT
    if isinstance(exc, KafkaError):
        return Outcome.RETRIABLE if exc.retriable else Outcome.RECOVERING
    if isinstance(exc, OSError):
        return Outcome.RETRIABLE  # a connection that cannot be made now may work later
    return Outcome.PERMANENT  # not Kafka's: a bug to look at, named in the 500


class KafkaSink:
    """Owns the idempotent acks=all producer; `send` returns only once the broker has the bytes.

    It trades throughput for latency honesty: every request awaits its own ack (no linger by
    default), so a 2xx always means "durable", and concurrent requests still share batches.

    The producer is replaced, never nursed: a write that fails in a way only a new producer
    cures (see `classify`), a sender task that has died, or Kafka coming back after an outage
    (records held through it may carry sequence numbers the broker no longer expects) starts a
    new one in the background. Writes answer RECOVERING (503) until it is up; the old one gets
    `ack_timeout` to deliver what it holds, then is closed. `probe`, run on a timer by the app,
    notices all of this with no request traffic at all.

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
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.sweep_interval = sweep_interval
        self._max_fast_size = max_request_size - _SIZE_MARGIN
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": None if compression == "none" else compression,
            "linger_ms": linger_ms,
            "max_request_size": max_request_size,
            "request_timeout_ms": max(1000, int(ack_timeout * 1000)),
            "client_id": "cfn-ingest",
            "partitioner": default_partitioner,  # aiokafka's placement, a faster murmur2
            **security.client_options(),
        }
        # The producer writes go to; None while a replacement is starting.
        self._producer: AIOKafkaProducer | None = None
        self._accumulator: Any = None  # its record accumulator (AIOKafkaProducer.send ends there)
        self.generation = 0  # counts producers; a failure of an old one replaces nothing
        self.replacements = 0
        self._replacing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # topic -> its partitions in order, learnt by its first send, relearnt on each metadata
        # update (a topic that grows is followed).
        self._routes: dict[str, tuple[TopicPartition, ...]] = {}
        # (deadline, future) of records sent and not yet acknowledged, every deadline send time
        # + ack_timeout: in deadline order (nearly all), and the few whose enqueue had to wait.
        self._pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._waited: list[tuple[float, asyncio.Future[Any]]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the first producer; raises what aiokafka raises when Kafka cannot be reached."""
        producer = self._new_producer()
        try:
            await producer.start()
        except BaseException:
            await _close(producer)
            raise
        self._install(producer)
        self._sweeper = asyncio.create_task(self._sweep())
        self._started = True

    async def stop(self) -> None:
        self._started = False  # no replacement starts from here on
        if self._replacing is not None:
            self._replacing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replacing
            self._replacing = None
        producer = self._producer
        if producer is not None:
            self._retire(producer)  # what it holds gets ack_timeout, then it closes
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**self._config)
        internals.check_producer(producer)
        return producer

    def _install(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._accumulator = internals.accumulator(producer)
        self.generation += 1
        producer.client.cluster.add_listener(self._metadata_updated)

    def _uninstall(self, producer: AIOKafkaProducer) -> None:
        producer.client.cluster.remove_listener(self._metadata_updated)
        if self._producer is producer:
            self._producer = None
            self._accumulator = None

    # ---- replacing the producer ---------------------------------------------------------------

    @property
    def replacing(self) -> bool:
        return self._replacing is not None and not self._replacing.done()

    def replace(self, cause: str, *, broken: bool = True) -> None:
        """Start a new producer in the background, unless one is already starting.

        Args:
            cause: why, for the log line (an error class name).
            broken: the current producer cannot write any more: stop sending to it now. When
                False (Kafka is back after an outage) it serves until the new one is up.
        """
        if self.replacing or not self._started:
            return
        if broken and self._producer is not None:
            self._retire(self._producer)
        self._replacing = asyncio.create_task(self._replace(cause))

    async def _replace(self, cause: str) -> None:
        log.warning("replacing the Kafka producer (%s)", cause)
        started = time.monotonic()
        delay = 0.25
        failures = 0
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
                break
            except Exception as exc:  # Kafka not reachable yet, or refusing this producer
                if failures == 0:
                    log.warning(
                        "a new Kafka producer could not start (%s); retrying", type(exc).__name__
                    )
                failures += 1
                await _close(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except BaseException:
                await _close(producer)
                raise
        old = self._producer
        if old is not None:
            self._retire(old)
        self._install(producer)
        self.replacements += 1
        log.warning("Kafka producer replaced in %.1fs", time.monotonic() - started)

    def _retire(self, producer: AIOKafkaProducer) -> None:
        """Stop sending to `producer`; give what it holds `ack_timeout` to be acknowledged,
        then fail the rest (their requests answer 503) and close it."""
        self._uninstall(producer)
        task = asyncio.create_task(self._close_retired(producer))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_retired(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(self.ack_timeout):
                await producer.flush()
        with contextlib.suppress(Exception):
            internals.abandon(producer, ProducerRetired())
        await _close(producer)

    # ---- writing ------------------------------------------------------------------------------

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers) -> SendResult:
        """Write one record and wait for the acks=all acknowledgement.

        Returns:
            ACKED only when the broker acknowledged; otherwise the failure's classification.
        """
        producer = self._producer
        if producer is None:
            return REPLACING
        generation = self.generation
        try:
            routes = self._routes.get(topic)
            size = len(value) + len(key)
            for name, data in headers:
                size += len(name) + len(data)
            if routes is None or size > self._max_fast_size:
                await self._send_public(producer, topic, key, value, headers)
                return ACKED
            started = time.monotonic()
            future = await self._accumulator.add_message(
                routes[partition_for(key, len(routes))], key, value, self.ack_timeout, None, headers
            )
            if not future.done():
                self._watch(future, started)
            await future
        except Exception as exc:
            return self._failed(topic, exc, generation)
        return ACKED

    def _failed(self, topic: str, exc: Exception, generation: int) -> SendResult:
        outcome = classify(exc)
        name = type(exc).__name__
        if outcome is Outcome.RECOVERING:
            if generation == self.generation:
                self.replace(name)
        elif outcome in (Outcome.PERMANENT, Outcome.TOO_LARGE):
            log.error("kafka write to %s refused: %s (%s)", topic, name, outcome.value)
        return SendResult(outcome, name)

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

    async def _send_public(
        self, producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes, headers: Headers
    ) -> None:
        """The public path: waits for the topic's metadata and checks the size exactly."""
        async with asyncio.timeout(self.ack_timeout):
            future = await producer.send(topic, value=value, key=key, headers=headers)
            await future
        if topic not in self._routes:
            partitions = producer.client.cluster.partitions_for_topic(topic)
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

    # ---- health -------------------------------------------------------------------------------

    async def probe(self, topic: str, timeout: float = 2.0) -> str | None:
        """Whether a write to `topic` can succeed now: None if so, else the reason.

        A fresh metadata round trip (cached metadata would say "fine" while the broker is
        down) that must show every partition of `topic` with a leader, through a producer whose
        sender is alive and which is not being replaced. A dead sender starts a replacement.
        """
        producer = self._producer
        if not self._started:
            return "not started"
        if producer is None:
            if not self.replacing:
                self.replace("no producer")
            return "producer being replaced"
        if not internals.sender_alive(producer):
            self.replace("the producer's sender stopped")
            return "producer being replaced"
        try:
            async with asyncio.timeout(timeout):
                cluster = await producer.client.fetch_all_metadata()
        except Exception as exc:  # any failure to learn metadata means "cannot write"
            return type(exc).__name__ or "no metadata"
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            return f"{topic} is not in the metadata"
        for partition in partitions:
            if cluster.leader_for_partition(TopicPartition(topic, partition)) in (None, -1):
                return f"{topic} partition {partition} has no leader"
        return None


async def _close(producer: AIOKafkaProducer) -> None:
    """Close a producer that may never have started, or be broken; nothing left to save."""
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("producer stop: %s", type(exc).__name__)
