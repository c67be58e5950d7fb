"""The durable write: one acks=all send per request on librdkafka's producer, bounded by the ack
timeout.

`produce` is a non-blocking call into librdkafka's queue; one thread per producer serves its
delivery reports and hands each batch of them to the event loop at once, and also flushes and
closes the producer. One sweeper bounds every record's wait (why librdkafka: docs/design.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer

from cfn.kafka import librdkafka_config
from cfn.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
_RdHeaders = list[tuple[str, str | bytes | None]]  # what librdkafka's stubs say it takes

# How long librdkafka keeps trying to write a record (message.timeout.ms), whatever the ack
# timeout: longer than a leader's failover, so that none times out in flight (see
# producer_config). A record answered 503 may still be written meanwhile: it is then in cfn.raw
# under the request id of an answer that was not 2xx, which the worker's dedup absorbs as it does
# the client's retry.
MESSAGE_TIMEOUT_S = 30.0

# How long the delivery thread waits in one poll; also how soon it notices it should close.
_POLL_SECONDS = 0.1


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
    error: str | None = None  # the Kafka error's name; never payload or secret content


ACKED = SendResult(Outcome.ACKED)
REPLACING = SendResult(Outcome.RECOVERING, "ProducerReplacing")


class AckTimeout(Exception):
    """No acknowledgement within the ack timeout (set by the sweeper on the record's future)."""


class DeliveryFailed(Exception):
    """librdkafka reported the record as not written; `error` is its KafkaError."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.name())
        self.error = error


class KafkaUnavailable(Exception):
    """A producer could not reach Kafka at start; the message is librdkafka's error name."""


def _codes(*names: str) -> frozenset[int]:
    return frozenset(getattr(KafkaError, name) for name in names)


_TIMEOUT_CODES = _codes("_MSG_TIMED_OUT", "_TIMED_OUT", "REQUEST_TIMED_OUT")
_TOO_LARGE_CODES = _codes("MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE")
# What an operator must fix: these are never cured by retrying or by a new producer.
_OPERATOR_CODES = _codes(
    "TOPIC_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "_AUTHENTICATION",
    "SASL_AUTHENTICATION_FAILED",
    "UNSUPPORTED_SASL_MECHANISM",
    "UNSUPPORTED_VERSION",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "TOPIC_EXCEPTION",  # an invalid topic name
    "INVALID_REQUIRED_ACKS",
    "POLICY_VIOLATION",
    "INVALID_CONFIG",
    "INVALID_TIMESTAMP",  # this host's clock is far off the broker's
    "INVALID_RECORD",
    "_INVALID_ARG",
    "_SSL",  # an untrusted or unreadable certificate
)
# The producer that held the record is gone or going: a new one cures it.
_RECOVERING_CODES = _codes("_PURGE_QUEUE", "_PURGE_INFLIGHT", "_FATAL", "_FENCED", "_DESTROY")


def classify(exc: BaseException | KafkaError) -> Outcome:
    """What a failed write means for the client and for the producer.

    librdkafka retries what can be retried until the ack timeout, so most failures it reports
    are timeouts or outages: 503s. The few an operator must fix are 500s, a record the broker
    will never take a 413. A fatal error (the idempotent producer's state is lost) and a record
    purged by a producer being closed are cured by a new producer: RECOVERING, a 503 while the
    sink replaces it. An exception that is not Kafka's is a 500 that names it.
    """
    if isinstance(exc, AckTimeout | asyncio.TimeoutError):
        return Outcome.TIMEOUT
    error = _kafka_error(exc)
    if error is None:
        if isinstance(exc, BufferError | OSError | KafkaUnavailable):
            return Outcome.RETRIABLE  # librdkafka's queue is full, or Kafka is unreachable now
        return Outcome.PERMANENT  # not Kafka's: a bug to look at, named in the 500
    code = error.code()
    if error.fatal() or code in _RECOVERING_CODES:
        return Outcome.RECOVERING
    if code in _TIMEOUT_CODES:
        return Outcome.TIMEOUT
    if code in _TOO_LARGE_CODES:
        return Outcome.TOO_LARGE
    if code in _OPERATOR_CODES:
        return Outcome.PERMANENT
    return Outcome.RETRIABLE  # an outage, a leader moving, not enough replicas


def _kafka_error(exc: BaseException | KafkaError) -> KafkaError | None:
    """The librdkafka error `exc` is or carries, if any."""
    if isinstance(exc, KafkaError):
        return exc
    if isinstance(exc, DeliveryFailed):
        return exc.error
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _error_name(exc: BaseException | KafkaError) -> str:
    error = _kafka_error(exc)
    return type(exc).__name__ if error is None else str(error.name())


def producer_config(
    bootstrap: str,
    *,
    ack_timeout: float,
    linger_ms: float,
    compression: str,
    max_request_size: int,
    security: KafkaSecurity,
    buffer_kbytes: int = 65536,
) -> dict[str, Any]:
    """librdkafka's settings for the ingest's producer (and the bench's bare baseline)."""
    timeout_ms = max(1000, int(ack_timeout * 1000))
    options: dict[str, Any] = {
        "client.id": "cfn-ingest",
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": compression,
        "linger.ms": linger_ms,
        # Far longer than the ack timeout (the sweeper answers 503 then): a record librdkafka
        # times out while in flight makes it bump the producer's epoch, and records it then
        # retries under the new epoch are not deduplicated by the broker (MESSAGE_TIMEOUT_S).
        "message.timeout.ms": int(max(MESSAGE_TIMEOUT_S, ack_timeout) * 1000),
        "request.timeout.ms": timeout_ms,
        # One produce request in flight per broker, so a partition's batches reach the broker
        # strictly one after another. With more, a first batch refused for a retriable cause
        # (NOT_ENOUGH_REPLICAS) goes back to be retried while the next one is accepted: a broker
        # takes any sequence as the first of a producer id it does not know (KIP-360), and
        # librdkafka then counts the refused batch as delivered ("implicitly acked by
        # subsequent batch success"). Its records were answered 202 and never written (the
        # nemesis, seed 116: docs/reliability.md).
        "max.in.flight.requests.per.connection": 1,
        "message.max.bytes": max_request_size,
        # What the producer may hold unacknowledged (librdkafka's default is 1 GiB): past it,
        # a write is refused at once (503) rather than the process growing.
        "queue.buffering.max.kbytes": buffer_kbytes,
        # Kafka's own (Java) placement of keys, as cfn.partition computes it; librdkafka's
        # default (CRC32) would put a key elsewhere than every other client.
        "partitioner": "murmur2_random",
        # Topics are created by cfn (ensure_topics); a typo must not create one.
        "allow.auto.create.topics": False,
        # Back within a second of a broker's return, not after librdkafka's 10 s backoff cap.
        "reconnect.backoff.max.ms": 1000,
        # A topic that grows is followed within this long.
        "topic.metadata.refresh.interval.ms": 10_000,
        # Connection failures are told once per state change by the ingest (cfn.health), not
        # per retry by librdkafka; its errors still reach the error callback.
        "log_level": 0,
        "log.connection.close": False,
    }
    return librdkafka_config(bootstrap, security, options)


class _Client:
    """One librdkafka producer and the thread that serves its delivery reports."""

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fatal: str | None = None  # the fatal error's name, once librdkafka reports one
        self.on_fatal: Any = None  # called on the loop with this client
        self._delivered: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._closing: float | None = None  # how long to flush for, once closing
        self.closed = asyncio.Event()
        self.producer = Producer({**config, "error_cb": self._error})
        self.thread = threading.Thread(target=self._serve, name="cfn-ingest-kafka", daemon=True)

    def __repr__(self) -> str:  # the config (and any password) is never shown
        return f"<_Client fatal={self.fatal!r}>"

    def start(self) -> None:
        self.thread.start()

    def deliver(self, future: asyncio.Future[None], error: KafkaError | None, _: Any) -> None:
        # librdkafka's delivery report, on this client's thread (inside poll or flush).
        self._delivered.append((future, error))

    def _error(self, error: KafkaError) -> None:
        # librdkafka's error callback, on this client's thread. Transient ones (a broker down)
        # are retried by librdkafka and told by the ingest's reachability log; a fatal one
        # needs a new producer.
        if error.fatal() and self.fatal is None:
            self.fatal = error.name()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
                self.loop.call_soon_threadsafe(self._tell_fatal)

    def _tell_fatal(self) -> None:
        if self.on_fatal is not None:
            self.on_fatal(self)

    def _hand_over(self) -> None:
        if self._delivered:
            delivered, self._delivered = self._delivered, []
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_resolve, delivered)

    def _serve(self) -> None:
        try:
            while self._closing is None:
                self.producer.poll(_POLL_SECONDS)
                self._hand_over()
            producer = self.producer
            # Closing: what it holds gets the flush time, the rest is purged and failed.
            producer.flush(self._closing)
            producer.purge()
            producer.flush(1.0)
        except Exception:  # the sink's probe sees the thread gone and replaces the producer
            log.exception("the Kafka producer's delivery thread failed")
        finally:
            self._hand_over()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self.closed.set)

    def close(self, flush_seconds: float) -> None:
        """Stop taking records; the thread flushes for `flush_seconds`, fails the rest, ends."""
        self._closing = max(0.0, flush_seconds)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self._closing is None


def _resolve(delivered: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for future, error in delivered:
        if future.done():  # the sweeper failed it at its deadline; the answer came too late
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(DeliveryFailed(error))


class KafkaSink:
    """Owns the idempotent acks=all producer; `send` returns only once the broker has the bytes.

    Every request awaits its own ack, so a 2xx always means "durable"; concurrent requests
    share batches, and a linger of a millisecond (CFN_INGEST_LINGER_MS) lets them share more.

    The producer is replaced, never nursed: a fatal error (librdkafka's word for an idempotent
    producer whose state the broker no longer has), a delivery thread that has died, or Kafka
    coming back after an outage starts a new one in the background. Writes answer RECOVERING
    (503) until it is up; the old one gets `ack_timeout` to deliver what it holds, then fails the
    rest and is closed. `probe`, run on a timer by the app, notices all of this with no request
    traffic at all.

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
        linger_ms: float = 1.0,
        compression: str = "lz4",
        max_request_size: int = 2 * 1024 * 1024,
        buffer_kbytes: int = 65536,
        sweep_interval: float = 0.02,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.sweep_interval = sweep_interval
        self._config = producer_config(
            bootstrap,
            ack_timeout=ack_timeout,
            linger_ms=linger_ms,
            compression=compression,
            max_request_size=max_request_size,
            security=security,
            buffer_kbytes=buffer_kbytes,
        )
        # The producer writes go to; None while a replacement is starting.
        self._client: _Client | None = None
        self.generation = 0  # counts producers; a failure of an old one replaces nothing
        self.replacements = 0
        self._replacing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # (deadline, future) of records sent and not yet acknowledged, in deadline order.
        self._pending: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    def __repr__(self) -> str:  # the config holds the SASL password: never shown
        return f"<KafkaSink generation={self.generation} started={self._started}>"

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the first producer once it has reached Kafka.

        Raises:
            KafkaUnavailable: no metadata from Kafka within the ack timeout (or a refusal).
        """
        client = await self._connect()
        self._install(client)
        self._sweeper = asyncio.create_task(self._sweep())
        self._started = True

    async def stop(self) -> None:
        self._started = False  # no replacement starts from here on
        if self._replacing is not None:
            self._replacing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replacing
            self._replacing = None
        client = self._client
        if client is not None:
            self._retire(client)  # what it holds gets ack_timeout, then it closes
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _connect(self) -> _Client:
        """A new producer, started, that has had metadata from Kafka."""
        client = _Client(self._config, asyncio.get_running_loop())
        client.start()
        try:
            await asyncio.to_thread(client.producer.list_topics, None, self.ack_timeout)
        except KafkaException as exc:
            await _close(client, 0.0)
            raise KafkaUnavailable(_error_name(exc)) from None
        except BaseException:
            await _close(client, 0.0)
            raise
        return client

    def _install(self, client: _Client) -> None:
        client.on_fatal = self._fatal
        self._client = client
        self.generation += 1

    def _fatal(self, client: _Client) -> None:
        if client is self._client:
            self.replace(client.fatal or "fatal error")

    # ---- replacing the producer ---------------------------------------------------------------

    @property
    def replacing(self) -> bool:
        return self._replacing is not None and not self._replacing.done()

    def replace(self, cause: str, *, broken: bool = True) -> None:
        """Start a new producer in the background, unless one is already starting.

        Args:
            cause: why, for the log line (an error name).
            broken: the current producer cannot write any more: stop sending to it now. When
                False (Kafka is back after an outage) it serves until the new one is up.
        """
        if self.replacing or not self._started:
            return
        if broken and self._client is not None:
            self._retire(self._client)
        self._replacing = asyncio.create_task(self._replace(cause))

    async def _replace(self, cause: str) -> None:
        log.warning("replacing the Kafka producer (%s)", cause)
        started = time.monotonic()
        delay = 0.25
        failures = 0
        while True:
            try:
                client = await self._connect()
                break
            except Exception as exc:  # Kafka not reachable yet, or refusing this producer
                if failures == 0:
                    log.warning(
                        "a new Kafka producer could not start (%s); retrying", _error_name(exc)
                    )
                failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        old = self._client
        if old is not None:
            self._retire(old)
        self._install(client)
        self.replacements += 1
        log.warning("Kafka producer replaced in %.1fs", time.monotonic() - started)

    def _retire(self, client: _Client) -> None:
        """Stop sending to `client`; give what it holds `ack_timeout` to be acknowledged, then
        fail the rest (their requests answer 503) and close it."""
        if self._client is client:
            self._client = None
        task = asyncio.create_task(_close(client, self.ack_timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # ---- writing ------------------------------------------------------------------------------

    def submit(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        done: Callable[[SendResult], None],
    ) -> None:
        """Write one record; `done` gets ACKED once the broker has acknowledged it (acks=all),
        otherwise the failure's classification. No task: the ingest's hot path."""
        client = self._client
        if client is None:
            done(REPLACING)
            return
        generation = self.generation
        future: asyncio.Future[None] = client.loop.create_future()
        try:
            client.producer.produce(
                topic,
                value,
                key,
                headers=cast(_RdHeaders, headers),
                on_delivery=partial(client.deliver, future),
            )
        except Exception as exc:
            done(self._failed(topic, exc, generation))
            return
        self._pending.append((time.monotonic() + self.ack_timeout, future))
        future.add_done_callback(partial(self._settled, topic, generation, done))

    def _settled(
        self,
        topic: str,
        generation: int,
        done: Callable[[SendResult], None],
        future: asyncio.Future[None],
    ) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is None and not future.cancelled():
            done(ACKED)
        else:
            done(
                self._failed(topic, exc if isinstance(exc, Exception) else AckTimeout(), generation)
            )

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> SendResult:
        """`submit`, awaited."""
        answered: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self.submit(topic, key, value, headers, answered.set_result)
        return await answered

    def _failed(self, topic: str, exc: Exception, generation: int) -> SendResult:
        outcome = classify(exc)
        name = _error_name(exc)
        if outcome is Outcome.RECOVERING:
            if generation == self.generation:
                self.replace(name)
        elif outcome in (Outcome.PERMANENT, Outcome.TOO_LARGE):
            log.error("kafka write to %s refused: %s (%s)", topic, name, outcome.value)
        return SendResult(outcome, name)

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
                    future.set_exception(AckTimeout())  # a late report skips a done future

    # ---- health -------------------------------------------------------------------------------

    async def probe(self, topic: str, timeout: float = 2.0) -> str | None:
        """Whether a write to `topic` can succeed now: None if so, else the reason.

        A fresh metadata round trip (cached metadata would say "fine" while the broker is
        down) that must show every partition of `topic` with a leader, through a producer whose
        delivery thread is alive, with no fatal error, and which is not being replaced. A dead
        thread or a fatal error starts a replacement.
        """
        client = self._client
        if not self._started:
            return "not started"
        if client is None:
            if not self.replacing:
                self.replace("no producer")
            return "producer being replaced"
        if client.fatal is not None or not client.alive:
            self.replace(client.fatal or "the producer's delivery thread stopped")
            return "producer being replaced"
        try:
            metadata = await asyncio.to_thread(client.producer.list_topics, topic, timeout)
        except Exception as exc:  # any failure to learn metadata means "cannot write"
            return _error_name(exc) or "no metadata"
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return f"{topic} is not in the metadata"
        for number, partition in sorted(found.partitions.items()):
            if partition.leader < 0:
                return f"{topic} partition {number} has no leader"
        return None


async def _close(client: _Client, flush_seconds: float) -> None:
    """Close a producer that may be broken: it flushes for `flush_seconds`, then fails the
    rest; waits for its thread to end (it does: flush and purge are bounded)."""
    client.close(flush_seconds)
    if client.thread.ident is not None:  # started
        await client.closed.wait()
