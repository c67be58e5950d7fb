"""The worker's per-record logic over plain dicts, without Kafka."""

from __future__ import annotations

import asyncio
from typing import cast

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import CollectorRegistry

from cfn.processors.driver import Driver, Raw
from cfn.processors.metrics import WorkerMetrics
from cfn.processors.pipeline import Pipeline
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio
from tests.payloads import alert, encode

NOW = 1_790_000_000


def pipeline(registry: CollectorRegistry, **settings: object) -> Pipeline:
    return Pipeline(
        WorkerSettings(**settings),  # type: ignore[arg-type]
        {},
        {},
        {},
        WorkerMetrics.create(registry),
        clock=lambda: float(NOW),
    )


def feed(p: Pipeline, bodies: list[bytes], first_offset: int = 0) -> None:
    driver = Driver(p, partitions=1)
    for offset, body in enumerate(bodies, first_offset):
        driver.feed(Raw(body, b"k", 0, offset, NOW * 1000))


def gauge(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_dlq_share_over_the_threshold_raises_the_alarm_and_clears_when_it_falls() -> None:
    registry = CollectorRegistry()
    p = pipeline(registry, dlq_alarm_sample=100, dlq_alarm_ratio=0.2)
    good = [encode(alert(correlation=f"c{i}", ts=NOW - i)) for i in range(300)]
    feed(p, good[:70] + [b"{not json"] * 30)
    assert gauge(registry, "cfn_dlq_ratio") == 0.3
    assert gauge(registry, "cfn_dlq_alarm") == 1.0
    feed(p, good[70:], first_offset=100)  # the bad ones leave the last-100 sample
    assert gauge(registry, "cfn_dlq_ratio") == 0.0
    assert gauge(registry, "cfn_dlq_alarm") == 0.0


def test_dlq_alarm_waits_for_a_minimal_sample() -> None:
    registry = CollectorRegistry()
    p = pipeline(registry, dlq_alarm_sample=1000, dlq_alarm_ratio=0.05)
    feed(p, [b"[]"] * 99)  # every record dead, but 99 records are too few to judge
    assert gauge(registry, "cfn_dlq_ratio") == 1.0
    assert gauge(registry, "cfn_dlq_alarm") == 0.0
    feed(p, [b"[]"], first_offset=99)
    assert gauge(registry, "cfn_dlq_alarm") == 1.0


def test_rate_inputs_are_summed_per_type_account_and_step_until_drained() -> None:
    p = pipeline(CollectorRegistry(), rate_windows=(60, 300), rate_lateness=120)
    minute = NOW - NOW % 60
    bodies = [
        encode(alert(account="a1", correlation=None, ts=minute + 1)),
        encode(alert(account="a1", correlation=None, ts=minute + 59)),  # same minute
        encode(alert(account="a1", correlation=None, ts=minute + 60)),  # the next one
        encode(alert(account="a2", correlation=None, ts=minute + 2)),
    ]
    for offset, body in enumerate(bodies):
        outputs = p.on_raw(body, b"k", {}, 3, offset, NOW * 1000)
        assert [o.role for o in outputs] == ["events"]  # no rate input per event
    assert p.drain_rate_inputs(4) == []  # another partition's
    drained = p.drain_rate_inputs(3)
    assert p.drain_rate_inputs(3) == []
    items = sorted((o.key, o.value) for o in drained)
    t = b"health_check_status_notification"
    assert [(k, jsonio.loads(v or b"")) for k, v in items] == [
        (t, {"t": t.decode(), "a": "a1", "ts": minute, "n": 2}),
        (t, {"t": t.decode(), "a": "a1", "ts": minute + 60, "n": 1}),
        (t, {"t": t.decode(), "a": "a2", "ts": minute, "n": 1}),
    ]
    emitted = [o for d in drained for o in p.on_rate_input(d.value or b"", 0)]
    late = {"t": t.decode(), "a": "a1", "ts": minute + 600, "n": 1}  # closes every window
    emitted += p.on_rate_input(jsonio.dumps(late), 0)
    counts = {}
    for o in emitted:
        r = jsonio.loads(o.value or b"")
        if r["scope"] == "type":
            counts[(r["window_s"], r["window_start"])] = r["count"]
    assert counts[(60, minute)] == 3 and counts[(60, minute + 60)] == 1
    assert counts[(300, minute - minute % 300)] == 4


def test_forgotten_rate_inputs_are_not_drained() -> None:
    p = pipeline(CollectorRegistry())
    p.on_raw(encode(alert(correlation=None, ts=NOW)), b"k", {}, 0, 0, NOW * 1000)
    p.forget_rate_inputs(0)  # the task failed: its transaction, and these, are gone
    assert p.drain_rate_inputs(0) == []


def test_commit_rounds_are_paced_to_the_transaction_budget() -> None:
    from cfn.processors.engine import Engine

    settings = WorkerSettings(commit_interval=0.2, max_transactions=60.0)
    engine = Engine(settings, pipeline(CollectorRegistry()), {})
    assert engine.commit_pause(0) == 0.2
    assert engine.commit_pause(12) == 0.2  # 12 partitions: 60 a second, the interval holds
    assert engine.commit_pause(96) == 1.6  # 96 busy partitions: 60 a second, not 480
    off = Engine(WorkerSettings(commit_interval=0.2), pipeline(CollectorRegistry()), {})
    assert off.commit_pause(96) == 0.2  # the default: no budget


class RecordingProducer:
    """The calls a commit round makes on a transactional producer, recorded; every batch is
    acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []  # (topic, partition, records) per batch
        self.offsets: dict[TopicPartition, int] = {}
        self.commits = 0

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(512 * 1024, 0, is_transactional=1)

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        self.sent.append((topic, partition, batch.record_count()))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked

    async def flush(self) -> None:
        pass

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None:
        self.offsets.update(offsets)

    async def commit_transaction(self) -> None:
        self.commits += 1


def test_tasks_sharing_a_transaction_send_one_batch_per_output_partition() -> None:
    """CFN_TRANSACTIONS=worker: the records every task has for one output partition (each
    task's rate inputs of one alert type) go in one batch. aiokafka queues one batch per
    partition and a second waits until the first is sent: a batch per task waited for a
    produce round trip apiece, every commit round."""
    from cfn.processors.engine import Engine, Task, Txn

    engine = Engine(WorkerSettings(transactions="worker"), pipeline(CollectorRegistry()), {})
    producer = RecordingProducer()
    txn = Txn(cast(AIOKafkaProducer, producer), open=True)
    tasks = [Task(p, txn) for p in range(3)]

    async def one_round() -> None:
        for task in tasks:
            p = task.partition
            await engine._append(task, "cfn.rate-input", 5, b"t", b"rate input %d" % p)
            await engine._append(task, "cfn.events", p, b"k", b"event")
            task.offsets[TopicPartition("cfn.raw", p)] = 10 + p
        await engine._commit_steps(tasks)

    asyncio.run(one_round())
    assert sorted(producer.sent) == [
        ("cfn.events", 0, 1),
        ("cfn.events", 1, 1),
        ("cfn.events", 2, 1),
        ("cfn.rate-input", 5, 3),
    ]
    assert producer.commits == 1
    assert producer.offsets == {TopicPartition("cfn.raw", p): 10 + p for p in range(3)}
    assert not txn.open and txn.pending == [] and txn.builders == {}


def test_the_lag_counts_only_partitions_the_consumer_is_still_assigned() -> None:
    """A rebalance changes the consumer's assignment before the callback that releases the
    tasks of the partitions it took away gets the engine's lock; a tick in between must not ask
    the consumer about those (aiokafka asserts; seed 106 of the nemesis)."""
    from aiokafka import AIOKafkaConsumer

    from cfn.processors.engine import Engine, Task, Txn

    class Consumer:
        def __init__(self, assigned: set[TopicPartition]) -> None:
            self.assigned = assigned

        def assignment(self) -> set[TopicPartition]:
            return set(self.assigned)

        def highwater(self, tp: TopicPartition) -> int:
            assert tp in self.assigned, "Partition is not assigned"  # as aiokafka does
            return 100

    engine = Engine(WorkerSettings(), pipeline(CollectorRegistry()), {})
    txn = Txn(cast(AIOKafkaProducer, RecordingProducer()), open=False)
    engine.tasks = {p: Task(p, txn, next_raw=90 + p) for p in range(3)}
    consumer = Consumer({TopicPartition(engine.raw_topic, p) for p in range(3)})
    engine._consumer = cast(AIOKafkaConsumer, consumer)
    assert engine.raw_lag() == 10 + 9 + 8
    consumer.assigned.discard(TopicPartition(engine.raw_topic, 2))  # moving away
    assert engine.raw_lag() == 10 + 9
