"""Kafka reachability as operators see it: one log line per change, a gauge, quiet client logs.

Both processes probe Kafka on their own timers (the ingest through its producer, the worker
through its consumer) and report each result to a `Reachability`. It logs "Kafka unreachable"
once when the state changes, and "Kafka reachable again" with how long the outage lasted when
it recovers; in between it says nothing, however many probes fail. `cfn_kafka_up` follows it.

aiokafka logs every failed connection attempt at ERROR, several a second per broker while one is
down. `quiet_client_logs` keeps the first of each kind and then at most one a minute, with a
count of what it held back, so the state lines above stay readable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge


class Reachability:
    """The up/down state of Kafka for one process.

    Args:
        log: where the state lines go.
        registry: holds the `cfn_kafka_up` gauge (1 reachable, 0 not; 0 until the first probe).
        clock: monotonic seconds, injected for tests.
    """

    def __init__(
        self,
        log: logging.Logger,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._clock = clock
        self._gauge = Gauge(
            "cfn_kafka_up",
            "1 while this process can reach Kafka and write (ingest) or consume (worker).",
            registry=registry,
        )
        self.up: bool | None = None  # None: not probed yet
        self.down_since: float | None = None

    def report(self, ok: bool, cause: str = "") -> bool:
        """Record one probe result; returns True when it changed the state (and was logged)."""
        if ok == self.up:
            return False
        now = self._clock()
        if ok:
            if self.down_since is None:
                self._log.info("Kafka reachable")
            else:
                self._log.warning(
                    "Kafka reachable again after %.1fs unreachable", now - self.down_since
                )
            self.down_since = None
        else:
            self.down_since = now
            self._log.warning("Kafka unreachable%s", f" ({cause})" if cause else "")
        self.up = ok
        self._gauge.set(1 if ok else 0)
        return True

    @property
    def outage(self) -> float:
        """Seconds since Kafka became unreachable, 0 while it is reachable."""
        return 0.0 if self.down_since is None else self._clock() - self.down_since


class _RateLimit(logging.Filter):
    """Lets the first record of each (logger, message template) through, then one a `period`."""

    def __init__(self, period: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.period = period
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) > 1000:  # templates are few; bound it anyway
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar held back in the last {self.period:.0f}s)"
        return True


def quiet_client_logs(period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
    """Rate-limit aiokafka's warnings and errors (see the module docstring), and drop its
    per-connection info lines ("Authenticated as ..." on every SASL connection). Idempotent."""
    logger = logging.getLogger("aiokafka")
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _RateLimit) for f in logger.filters):
        limit = _RateLimit(period, clock)
        # Filters on a logger do not apply to its children's records: add it to each that logs.
        for name in ("aiokafka", *_AIOKAFKA_LOGGERS):
            logging.getLogger(name).addFilter(limit)


# The aiokafka modules that log connection and delivery failures.
_AIOKAFKA_LOGGERS = (
    "aiokafka.conn",
    "aiokafka.client",
    "aiokafka.cluster",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.admin.client",
)
