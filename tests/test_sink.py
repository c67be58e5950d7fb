"""ingest.sink.KafkaSink: where records land, what a failure is called, and the ack timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import errors as Errors
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from cfn.ingest.sink import AckTimeout, KafkaSink, Outcome, classify
from cfn.partition import partition_for
from tests.kafka_util import drain, run

HEADERS = [("cfn-tenant", b"default"), ("cfn-request-id", b"0" * 32)]


async def _send_all(sink: KafkaSink, topic: str, keys: list[bytes]) -> list[Outcome]:
    """The first alone (it learns the partitions), the rest at once."""
    first = await sink.send(topic, keys[0], b"value of " + keys[0], HEADERS)
    rest = await asyncio.gather(
        *(sink.send(topic, key, b"value of " + key, HEADERS) for key in keys[1:])
    )
    return [result.outcome for result in (first, *rest)]


async def _add_partitions(bootstrap: str, topic: str, total: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()


@pytest.mark.broker
def test_records_land_where_kafkas_partitioner_puts_them_also_after_a_topic_grows(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("sink-place", partitions=6)
    before = [b"acct|incident-%d" % i for i in range(40)]
    after = [b"acct|later-%d" % i for i in range(40)]

    async def scenario() -> tuple[list[Outcome], list[Outcome], int]:
        sink = KafkaSink(kafka, ack_timeout=10.0)
        public = 0
        send_public = sink._send_public

        async def counted(*args: Any) -> None:
            nonlocal public
            public += 1
            await send_public(*args)

        sink._send_public = counted  # type: ignore[method-assign,assignment]
        await sink.start()
        try:
            first = await _send_all(sink, topic, before)
            await _add_partitions(kafka, topic, 9)
            # A metadata update tells the sink; the next sends place over nine partitions.
            producer = sink._producer
            assert producer is not None
            cluster = producer.client.cluster
            for _ in range(100):
                await producer.client.force_metadata_update()
                if len(cluster.available_partitions_for_topic(topic) or ()) == 9:
                    break
                await asyncio.sleep(0.1)
            assert len(sink._routes[topic]) == 9
            second = await _send_all(sink, topic, after)
        finally:
            await sink.stop()
        return first, second, public

    first, second, public = run(scenario())
    assert set(first) == set(second) == {Outcome.ACKED}
    # Only the very first send took the public path (it learnt the partitions); the metadata
    # update relearnt them without one.
    assert public == 1, "the sink did not take its fast path with this aiokafka"
    records = run(drain(kafka, topic, expect=len(before) + len(after)))
    placed = {record.key: record.partition for record in records}
    assert placed == {
        **{key: partition_for(key, 6) for key in before},
        **{key: partition_for(key, 9) for key in after},
    }
    assert len({placed[key] for key in after}) > 6  # the new partitions are used
    for record in records:
        assert record.value == b"value of " + record.key
        assert list(record.headers) == HEADERS


@pytest.mark.broker
def test_records_near_or_over_max_request_size_are_measured_exactly(
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


class _SilentAccumulator:
    """Takes records like aiokafka's accumulator and never acknowledges them; a record whose key
    is in `slow` waits that many seconds for room first, as for a full batch."""

    def __init__(self, slow: dict[bytes, float] | None = None) -> None:
        self.futures: list[asyncio.Future[Any]] = []
        self.slow = slow or {}

    async def add_message(self, tp: object, key: bytes, *args: object) -> asyncio.Future[Any]:
        if key in self.slow:
            await asyncio.sleep(self.slow[key])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def _offline(sink: KafkaSink, accumulator: _SilentAccumulator) -> Any:
    """Give `sink` a producer that is never started, writing into `accumulator`."""
    producer = sink._new_producer()
    sink._producer = producer
    sink._accumulator = accumulator
    return producer


def test_an_unacknowledged_record_times_out_at_the_ack_timeout() -> None:
    async def scenario() -> tuple[list[Outcome], float, int]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=0.3, sweep_interval=0.02)
        silent = _SilentAccumulator()
        producer = _offline(sink, silent)
        sink._routes["t"] = sink._routes_for("t", range(3))
        sweeper = asyncio.create_task(sink._sweep())
        started = time.monotonic()
        try:
            results = await asyncio.gather(
                *(sink.send("t", b"k%d" % i, b"v", []) for i in range(5))
            )
            elapsed = time.monotonic() - started
            # The records' own futures carry the timeout, so aiokafka, which skips done futures,
            # leaves them alone when the broker answers late.
            failed = sum(isinstance(future.exception(), AckTimeout) for future in silent.futures)
        finally:
            sweeper.cancel()
            await producer.stop()  # never started; closed so it does not warn
        return [result.outcome for result in results], elapsed, failed

    outcomes, elapsed, failed = asyncio.run(scenario())
    assert outcomes == [Outcome.TIMEOUT] * 5
    assert failed == 5
    assert elapsed >= 0.3  # never before the ack timeout
    assert elapsed < 0.3 + 5.0  # and not seconds after it (a generous bound for a busy machine)


def test_acknowledged_records_leave_the_sweepers_queue() -> None:
    async def scenario() -> tuple[list[Outcome], int]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=30.0, sweep_interval=0.01)
        silent = _SilentAccumulator()
        producer = _offline(sink, silent)
        sink._routes["t"] = sink._routes_for("t", range(3))
        sweeper = asyncio.create_task(sink._sweep())
        try:
            sends = [asyncio.create_task(sink.send("t", b"k%d" % i, b"v", [])) for i in range(50)]
            while len(silent.futures) < 50:
                await asyncio.sleep(0.001)
            for future in silent.futures:
                future.set_result(None)  # the acks
            results = await asyncio.gather(*sends)
            await asyncio.sleep(0.05)
            left = len(sink._pending)
        finally:
            sweeper.cancel()
            await producer.stop()
        return [result.outcome for result in results], left

    outcomes, left = asyncio.run(scenario())
    assert outcomes == [Outcome.ACKED] * 50
    assert left == 0  # memory is bounded by what is in flight, not by rate x timeout


def test_a_record_whose_enqueue_waited_still_times_out_at_its_own_deadline() -> None:
    """Requests that start later and enqueue at once must not delay its timeout: it fails
    first, though it sits behind them, and none fails before its own deadline."""

    async def scenario() -> tuple[list[bytes], float, float]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=0.5, sweep_interval=0.02)
        producer = _offline(sink, _SilentAccumulator(slow={b"slow": 0.3}))
        sink._routes["t"] = sink._routes_for("t", range(3))
        sweeper = asyncio.create_task(sink._sweep())
        started = time.monotonic()
        order: list[bytes] = []

        async def timed(key: bytes) -> float:
            result = await sink.send("t", key, b"v", [])
            assert result.outcome is Outcome.TIMEOUT
            order.append(key)
            return time.monotonic() - started

        try:
            slow = asyncio.create_task(timed(b"slow"))
            await asyncio.sleep(0.25)  # later requests, deadlines at 0.75 s, enqueue first
            later = [asyncio.create_task(timed(b"later%d" % i)) for i in range(5)]
            slow_elapsed = await slow
            later_elapsed = min(await asyncio.gather(*later))
        finally:
            sweeper.cancel()
            await producer.stop()
        return order, slow_elapsed, later_elapsed

    order, slow_elapsed, later_elapsed = asyncio.run(scenario())
    assert order[0] == b"slow", order  # its own deadline (0.5 s), not the later ones' (0.75 s)
    assert slow_elapsed >= 0.5
    assert later_elapsed >= 0.75


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (Errors.OutOfOrderSequenceNumber(), Outcome.RECOVERING),
        (Errors.UnknownProducerId(), Outcome.RECOVERING),
        (Errors.InvalidProducerEpoch(), Outcome.RECOVERING),
        (Errors.ProducerFenced(), Outcome.RECOVERING),
        (Errors.KafkaError("Unexpected error during batch delivery"), Outcome.RECOVERING),
        (Errors.NotEnoughReplicasError(), Outcome.RETRIABLE),
        (Errors.NotLeaderForPartitionError(), Outcome.RETRIABLE),
        (Errors.KafkaConnectionError(), Outcome.RETRIABLE),
        (ConnectionRefusedError(), Outcome.RETRIABLE),
        (AckTimeout(), Outcome.TIMEOUT),
        (Errors.MessageSizeTooLargeError(), Outcome.TOO_LARGE),
        (Errors.RecordListTooLargeError(), Outcome.TOO_LARGE),
        (Errors.TopicAuthorizationFailedError(), Outcome.PERMANENT),
        (Errors.ClusterAuthorizationFailedError(), Outcome.PERMANENT),
        (Errors.SaslAuthenticationFailed(), Outcome.PERMANENT),
        (Errors.InvalidTopicError(), Outcome.PERMANENT),
        (Errors.InvalidTimestampError(), Outcome.PERMANENT),
        (RuntimeError("a bug"), Outcome.PERMANENT),
    ],
)
def test_only_what_an_operator_must_fix_is_permanent(error: Exception, outcome: Outcome) -> None:
    assert classify(error) is outcome


@pytest.mark.broker
def test_a_broken_producer_is_replaced_and_writes_resume(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    """A write failing as aiokafka's idempotent producer does after a sequence gap: 503 for it,
    503 (not 500) for writes during the switch, then a new producer and 202s again."""
    topic = topic_factory("sink-broken", partitions=3)

    async def scenario() -> tuple[list[Outcome], list[Outcome], int, bool]:
        sink = KafkaSink(kafka, ack_timeout=10.0)
        await sink.start()
        try:
            first = await _send_all(sink, topic, [b"before-%d" % i for i in range(5)])
            old = sink._producer
            real_add = sink._accumulator.add_message

            async def out_of_order(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
                await real_add(*args, **kwargs)  # the record is sent; its answer is the error
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(Errors.OutOfOrderSequenceNumber())
                return failed

            sink._accumulator.add_message = out_of_order
            broken = await sink.send(topic, b"broken", b"v", HEADERS)
            during = await sink.send(topic, b"during", b"v", HEADERS)
            for _ in range(100):
                if sink._producer is not None and sink._producer is not old:
                    break
                await asyncio.sleep(0.05)
            replaced = sink._producer is not old
            after = await _send_all(sink, topic, [b"after-%d" % i for i in range(5)])
        finally:
            await sink.stop()
        outcomes = [broken.outcome, during.outcome]
        return first + outcomes, after, sink.replacements, replaced

    before, after, replacements, replaced = run(scenario())
    assert before == [Outcome.ACKED] * 5 + [Outcome.RECOVERING, Outcome.RECOVERING]
    assert replaced and replacements == 1
    assert after == [Outcome.ACKED] * 5
    keys = {record.key for record in run(drain(kafka, topic, settle=2.0))}
    assert {b"after-%d" % i for i in range(5)} <= keys


@pytest.mark.broker
def test_a_dead_sender_is_noticed_without_traffic(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    """The probe (the app runs it every second) finds a producer whose sender task has died
    and replaces it, with no request needed to find out."""
    topic = topic_factory("sink-idle", partitions=1)

    async def scenario() -> tuple[str | None, str | None, str | None, Outcome]:
        sink = KafkaSink(kafka, ack_timeout=10.0)
        await sink.start()
        try:
            healthy = await sink.probe(topic)
            assert sink._producer is not None
            sink._producer._sender.sender_task.cancel()  # as if it had crashed
            await asyncio.sleep(0.05)
            noticed = await sink.probe(topic)
            for _ in range(100):
                if await sink.probe(topic) is None:
                    break
                await asyncio.sleep(0.05)
            recovered = await sink.probe(topic)
            written = (await sink.send(topic, b"k", b"v", HEADERS)).outcome
        finally:
            await sink.stop()
        return healthy, noticed, recovered, written

    healthy, noticed, recovered, written = run(scenario())
    assert healthy is None
    assert noticed == "producer being replaced"
    assert recovered is None
    assert written is Outcome.ACKED
