"""ingest.sink.KafkaSink: where records land, what a failure is called, and the ack timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from ingest.sink import AckTimeout, KafkaSink, Outcome
from schemas.partition import partition_for
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
            cluster = sink._producer.client.cluster
            for _ in range(100):
                await sink._producer.client.force_metadata_update()
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


def test_an_unacknowledged_record_times_out_at_the_ack_timeout() -> None:
    async def scenario() -> tuple[list[Outcome], float, int]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=0.3, sweep_interval=0.02)
        silent = _SilentAccumulator()
        sink._accumulator = silent
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
            await sink._producer.stop()  # never started; closed so it does not warn
        return [result.outcome for result in results], elapsed, failed

    outcomes, elapsed, failed = asyncio.run(scenario())
    assert outcomes == [Outcome.TIMEOUT] * 5
    assert failed == 5
    assert 0.3 <= elapsed < 0.3 + 1.0


def test_acknowledged_records_leave_the_sweepers_queue() -> None:
    async def scenario() -> tuple[list[Outcome], int]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=30.0, sweep_interval=0.01)
        silent = _SilentAccumulator()
        sink._accumulator = silent
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
            await sink._producer.stop()
        return [result.outcome for result in results], left

    outcomes, left = asyncio.run(scenario())
    assert outcomes == [Outcome.ACKED] * 50
    assert left == 0  # memory is bounded by what is in flight, not by rate x timeout


def test_a_record_whose_enqueue_waited_still_times_out_at_its_own_deadline() -> None:
    """Requests that start later and enqueue at once must not delay its timeout."""

    async def scenario() -> tuple[float, float]:
        sink = KafkaSink("127.0.0.1:1", ack_timeout=0.5, sweep_interval=0.02)
        sink._accumulator = _SilentAccumulator(slow={b"slow": 0.3})
        sink._routes["t"] = sink._routes_for("t", range(3))
        sweeper = asyncio.create_task(sink._sweep())
        started = time.monotonic()

        async def timed(key: bytes) -> float:
            result = await sink.send("t", key, b"v", [])
            assert result.outcome is Outcome.TIMEOUT
            return time.monotonic() - started

        try:
            slow = asyncio.create_task(timed(b"slow"))
            await asyncio.sleep(0.25)  # later requests, deadlines at 0.75 s, enqueue first
            later = [asyncio.create_task(timed(b"later%d" % i)) for i in range(5)]
            slow_elapsed = await slow
            later_elapsed = min(await asyncio.gather(*later))
        finally:
            sweeper.cancel()
            await sink._producer.stop()
        return slow_elapsed, later_elapsed

    slow_elapsed, later_elapsed = asyncio.run(scenario())
    assert 0.5 <= slow_elapsed < 0.68  # its own deadline, not the later requests' 0.75 s
    assert later_elapsed >= 0.75
