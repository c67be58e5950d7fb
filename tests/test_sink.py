"""ingest.sink.KafkaSink: where records land, what a failure is called, and the ack timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from confluent_kafka import KafkaError, KafkaException

from cfn.ingest.sink import (
    AckTimeout,
    DeliveryFailed,
    KafkaSink,
    KafkaUnavailable,
    Outcome,
    _Client,
    classify,
    producer_config,
)
from cfn.partition import partition_for
from cfn.security import KafkaSecurity, Secret
from tests.kafka_util import drain, run

HEADERS = [("cfn-tenant", b"default"), ("cfn-request-id", b"0" * 32)]


async def _send_all(sink: KafkaSink, topic: str, keys: list[bytes]) -> list[Outcome]:
    results = await asyncio.gather(
        *(sink.send(topic, key, b"value of " + key, HEADERS) for key in keys)
    )
    return [result.outcome for result in results]


async def _add_partitions(bootstrap: str, topic: str, total: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()


def _offline(sink: KafkaSink) -> _Client:
    """Give `sink` a started producer for a Kafka that is not there, and its sweeper."""
    client = _Client(sink._config, asyncio.get_running_loop())
    client.start()
    sink._install(client)
    sink._started = True
    sink._sweeper = asyncio.create_task(sink._sweep())
    return client


@pytest.mark.broker
def test_records_land_where_kafkas_partitioner_puts_them_also_after_a_topic_grows(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    """Java's murmur2 placement (cfn.partition), not librdkafka's CRC32 default; the app's
    probe (every second) fetches the metadata that shows the new partitions."""
    topic = topic_factory("sink-place", partitions=6)
    before = [b"acct|incident-%d" % i for i in range(40)]
    after = [b"acct|later-%d" % i for i in range(40)]

    async def scenario() -> tuple[list[Outcome], list[Outcome], str | None]:
        sink = KafkaSink(kafka, ack_timeout=10.0)
        await sink.start()
        try:
            first = await _send_all(sink, topic, before)
            await _add_partitions(kafka, topic, 9)
            probed = await sink.probe(topic)
            second = await _send_all(sink, topic, after)
        finally:
            await sink.stop()
        return first, second, probed

    first, second, probed = run(scenario())
    assert probed is None
    assert set(first) == set(second) == {Outcome.ACKED}
    records = run(drain(kafka, topic, expect=len(before) + len(after)))
    placed = {record.key: record.partition for record in records}
    assert placed == {
        **{key: partition_for(key, 6) for key in before},
        **{key: partition_for(key, 9) for key in after},
    }
    assert len({placed[key] for key in after}) > 6  # the new partitions are used
    for record in records:
        assert record.value == b"value of " + record.key  # the exact bytes
        assert list(record.headers) == HEADERS


@pytest.mark.broker
def test_a_record_over_max_request_size_is_too_large_and_one_under_it_lands(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("sink-size", partitions=2)

    async def scenario() -> list[Outcome]:
        sink = KafkaSink(kafka, ack_timeout=10.0, max_request_size=20_000)
        await sink.start()
        try:
            outcomes = [(await sink.send(topic, b"k", b"small", HEADERS)).outcome]
            for size in (19_500, 20_000, 50_000):  # near the limit, at it, far over it
                outcomes.append((await sink.send(topic, b"k", b"x" * size, HEADERS)).outcome)
        finally:
            await sink.stop()
        return outcomes

    assert run(scenario()) == [Outcome.ACKED, Outcome.ACKED, Outcome.TOO_LARGE, Outcome.TOO_LARGE]
    sizes = sorted(len(record.value) for record in run(drain(kafka, topic, expect=2)))
    assert sizes == [5, 19_500]


def test_an_unacknowledged_record_times_out_at_the_ack_timeout() -> None:
    async def scenario() -> tuple[list[Outcome], float, int]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=0.3, sweep_interval=0.02)
        _offline(sink)
        started = time.monotonic()
        try:
            results = await asyncio.gather(
                *(sink.send("t", b"k%d" % i, b"v", []) for i in range(5))
            )
            elapsed = time.monotonic() - started
            # librdkafka's own timeout (1 s at least) reports them later: skipped, as done.
            await asyncio.sleep(1.5)
            left = len(sink._pending)
        finally:
            await sink.stop()
        return [result.outcome for result in results], elapsed, left

    outcomes, elapsed, left = asyncio.run(scenario())
    assert outcomes == [Outcome.TIMEOUT] * 5
    assert elapsed >= 0.3  # never before the ack timeout
    assert elapsed < 0.3 + 5.0  # and not seconds after it (a generous bound for a busy machine)
    assert left == 0


@pytest.mark.broker
def test_acknowledged_records_leave_the_sweepers_queue(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("sink-sweep", partitions=3)

    async def scenario() -> tuple[list[Outcome], int]:
        sink = KafkaSink(kafka, ack_timeout=30.0, sweep_interval=0.01)
        await sink.start()
        try:
            outcomes = await _send_all(sink, topic, [b"k%d" % i for i in range(50)])
            await asyncio.sleep(0.05)
            left = len(sink._pending)
        finally:
            await sink.stop()
        return outcomes, left

    outcomes, left = run(scenario())
    assert outcomes == [Outcome.ACKED] * 50
    assert left == 0  # memory is bounded by what is in flight, not by rate x timeout


def _error(name: str, *, fatal: bool = False) -> KafkaError:
    return KafkaError(getattr(KafkaError, name), fatal=fatal)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (_error("OUT_OF_ORDER_SEQUENCE_NUMBER", fatal=True), Outcome.RECOVERING),
        (_error("UNKNOWN_PRODUCER_ID", fatal=True), Outcome.RECOVERING),
        (DeliveryFailed(_error("_PURGE_QUEUE")), Outcome.RECOVERING),
        (DeliveryFailed(_error("_PURGE_INFLIGHT")), Outcome.RECOVERING),
        (KafkaException(_error("_FATAL")), Outcome.RECOVERING),
        (DeliveryFailed(_error("NOT_ENOUGH_REPLICAS")), Outcome.RETRIABLE),
        (DeliveryFailed(_error("NOT_LEADER_FOR_PARTITION")), Outcome.RETRIABLE),
        (DeliveryFailed(_error("_TRANSPORT")), Outcome.RETRIABLE),
        (DeliveryFailed(_error("_ALL_BROKERS_DOWN")), Outcome.RETRIABLE),
        (DeliveryFailed(_error("_UNKNOWN_TOPIC")), Outcome.RETRIABLE),  # being created
        (BufferError("Local: Queue full"), Outcome.RETRIABLE),
        (ConnectionRefusedError(), Outcome.RETRIABLE),
        (KafkaUnavailable("_TRANSPORT"), Outcome.RETRIABLE),
        (AckTimeout(), Outcome.TIMEOUT),
        (DeliveryFailed(_error("_MSG_TIMED_OUT")), Outcome.TIMEOUT),
        (KafkaException(_error("MSG_SIZE_TOO_LARGE")), Outcome.TOO_LARGE),
        (DeliveryFailed(_error("RECORD_LIST_TOO_LARGE")), Outcome.TOO_LARGE),
        (DeliveryFailed(_error("TOPIC_AUTHORIZATION_FAILED")), Outcome.PERMANENT),
        (DeliveryFailed(_error("CLUSTER_AUTHORIZATION_FAILED")), Outcome.PERMANENT),
        (DeliveryFailed(_error("SASL_AUTHENTICATION_FAILED")), Outcome.PERMANENT),
        (DeliveryFailed(_error("_AUTHENTICATION")), Outcome.PERMANENT),
        (DeliveryFailed(_error("TOPIC_EXCEPTION")), Outcome.PERMANENT),
        (DeliveryFailed(_error("INVALID_TIMESTAMP")), Outcome.PERMANENT),
        (RuntimeError("a bug"), Outcome.PERMANENT),
    ],
)
def test_only_what_an_operator_must_fix_is_permanent(error: Any, outcome: Outcome) -> None:
    assert classify(error) is outcome


@pytest.mark.broker
def test_a_fatal_producer_is_replaced_and_writes_resume(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    """librdkafka reporting a fatal error (an idempotent producer's state lost): 503 (not 500)
    for writes during the switch, then a new producer and 202s again."""
    topic = topic_factory("sink-broken", partitions=3)

    async def scenario() -> tuple[list[Outcome], Outcome, list[Outcome], int, bool]:
        sink = KafkaSink(kafka, ack_timeout=10.0)
        await sink.start()
        try:
            first = await _send_all(sink, topic, [b"before-%d" % i for i in range(5)])
            old = sink._client
            assert old is not None
            # The new producer starts only when the test says: "during" is during the switch.
            switch = asyncio.Event()
            connect = sink._connect

            async def held_connect() -> Any:
                await switch.wait()
                return await connect()

            sink._connect = held_connect  # type: ignore[method-assign]
            # librdkafka's error callback, as its thread calls it.
            await asyncio.to_thread(old._error, _error("OUT_OF_ORDER_SEQUENCE_NUMBER", fatal=True))
            await asyncio.sleep(0.05)
            during = (await sink.send(topic, b"during", b"v", HEADERS)).outcome
            switch.set()
            for _ in range(100):
                if sink._client is not None and sink._client is not old:
                    break
                await asyncio.sleep(0.05)
            replaced = sink._client is not old
            after = await _send_all(sink, topic, [b"after-%d" % i for i in range(5)])
        finally:
            await sink.stop()
        return first, during, after, sink.replacements, replaced

    first, during, after, replacements, replaced = run(scenario())
    assert first == [Outcome.ACKED] * 5
    assert during is Outcome.RECOVERING
    assert replaced and replacements == 1
    assert after == [Outcome.ACKED] * 5
    keys = {record.key for record in run(drain(kafka, topic, settle=2.0))}
    assert {b"after-%d" % i for i in range(5)} <= keys


class _CrashingPoll:
    """A producer whose delivery thread's next poll raises; everything else is the real one."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def poll(self, timeout: float) -> int:
        raise RuntimeError("simulated crash")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


@pytest.mark.broker
def test_a_dead_delivery_thread_is_noticed_without_traffic(
    kafka: str, topic_factory: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """The probe (the app runs it every second) finds a producer whose delivery thread has
    died and replaces it, with no request needed to find out."""
    topic = topic_factory("sink-idle", partitions=1)

    async def scenario() -> tuple[str | None, str | None, str | None, Outcome, tuple[int, int]]:
        sink = KafkaSink(kafka, ack_timeout=10.0)
        await sink.start()
        try:
            healthy = await sink.probe(topic)
            client = sink._client
            assert client is not None and sink.replacements == 0
            client.producer = _CrashingPoll(client.producer)  # type: ignore[assignment]
            # The thread has ended (its `closed` event is set a moment before it has).
            await asyncio.to_thread(client.thread.join, 30.0)
            assert not client.thread.is_alive()
            noticed = await sink.probe(topic)  # finds it dead and starts the replacement
            replacing = sink._replacing
            assert replacing is not None
            await asyncio.wait_for(asyncio.shield(replacing), 30.0)
            recovered = await sink.probe(topic)
            written = (await sink.send(topic, b"k", b"v", HEADERS)).outcome
            counts = (sink.replacements, sink.generation)
        finally:
            await sink.stop()
        return healthy, noticed, recovered, written, counts

    with caplog.at_level("WARNING", logger="cfn.ingest.sink"):
        healthy, noticed, recovered, written, counts = run(scenario())
    assert healthy is None
    assert noticed == "producer being replaced"
    assert counts == (1, 2)  # one replacement, by the probe: a second producer
    causes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("replacing")]
    assert causes == ["replacing the Kafka producer (the producer's delivery thread stopped)"]
    assert recovered is None
    assert written is Outcome.ACKED


def test_the_sasl_password_is_in_no_repr_and_no_error() -> None:
    security = KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        username="cfn-ingest",
        password=Secret("hunter2-do-not-print"),
    )

    async def scenario() -> tuple[str, str]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=0.5, security=security)
        shown = repr(sink)
        with pytest.raises(KafkaUnavailable) as failed:
            await sink.start()
        return shown, f"{failed.value!r} {failed.value}"

    shown, error = asyncio.run(scenario())
    assert "hunter2" not in shown
    assert "hunter2" not in error
    assert "_TRANSPORT" in error or "_TIMED_OUT" in error


def test_the_producer_keeps_one_request_in_flight_per_broker() -> None:
    """With more, librdkafka can count a refused first batch as delivered when the next one is
    accepted (a broker takes any first sequence of a producer id it does not know): a 202 for
    bytes Kafka never wrote (the nemesis, seed 116)."""
    config = producer_config(
        "127.0.0.1:9092",
        ack_timeout=10.0,
        linger_ms=1.0,
        compression="lz4",
        max_request_size=1_000_000,
        security=KafkaSecurity(),
    )
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["max.in.flight.requests.per.connection"] == 1
