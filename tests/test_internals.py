"""cfn.internals: the aiokafka and uvicorn internals cfn uses exist in what is installed.

These fail when an upgrade moves one, before any request or commit would."""

from __future__ import annotations

import asyncio
import gc
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalGenerationError, KafkaError
from aiokafka.structs import TopicPartition

from cfn import internals
from tests.kafka_util import create_topics, run


def test_installed_versions_are_the_tested_ones() -> None:
    internals.check_versions()


def test_transactional_producer_internals_exist() -> None:
    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-0")
        try:
            internals.check_transactional(producer)
            assert internals.transaction_error(producer) is None  # no transaction broke
            internals.abandon(producer, RuntimeError("nothing pending"))
        finally:
            await producer.stop()

    asyncio.run(scenario())
    with pytest.raises(internals.InternalsError, match=r"_txn_manager\._transaction_waiter"):
        internals.check_transactional(object())


def test_uvicorn_server_internals_exist() -> None:
    internals.check_server()


def test_admin_internals_exist() -> None:
    async def scenario() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1")
        try:
            internals.check_admin(admin)
        finally:
            await admin.close()

    asyncio.run(scenario())
    with pytest.raises(internals.InternalsError, match=r"AIOKafkaAdminClient has no `_client\."):
        internals.check_admin(object())


def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(internals.InternalsError, match=r"_txn_manager\._transaction_waiter"):
        internals.check_transactional(object())

    class ServerState:  # uvicorn's, without the date header list
        def __init__(self) -> None:
            self.connections: set[object] = set()
            self.tasks: set[object] = set()
            self.total_requests = 0

    monkeypatch.setattr("uvicorn.server.ServerState", ServerState)
    with pytest.raises(internals.InternalsError, match="ServerState has no `default_headers`"):
        internals.check_server()


@pytest.mark.broker
def test_consumer_internals_exist_and_work(kafka: str) -> None:
    async def scenario() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id="cfn-internals-check")
        await consumer.start()
        try:
            internals.check_consumer(consumer)
            cluster = await internals.fetch_metadata(consumer)
            committed = await internals.fetch_committed(consumer, [], owners="t-")
            assert committed == {}
            return len(cluster.brokers())
        finally:
            await consumer.stop()

    assert run(scenario()) >= 1


@pytest.mark.broker
def test_abandoned_records_fail_at_once_and_leave_no_unretrieved_error(kafka: str) -> None:
    """A closed task's records fail with the caller's error, which the caller reports once:
    asyncio must not log each of their futures as "exception was never retrieved"."""
    topic = f"abandon-{uuid.uuid4().hex[:8]}"
    unretrieved: list[str] = []

    async def scenario() -> None:
        await create_topics(kafka, [topic])
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context["message"]))
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka, transactional_id=f"abandon-{topic}", linger_ms=60_000
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            futures = [await producer.send(topic, b"held") for _ in range(3)]
            internals.abandon(producer, KafkaError("task closed"))
            assert all(future.done() for future in futures)
            del futures
            gc.collect()
        finally:
            await producer.stop()
        gc.collect()

    run(scenario())
    assert unretrieved == []


@pytest.mark.broker
def test_group_metadata_commits_and_stable_offsets_on_the_broker(kafka: str) -> None:
    """KIP-447 as cfn sends it (cfn/internals/protocol.py): TxnOffsetCommit v3 commits for the
    current generation and is refused for an older one, and OffsetFetch v7 waits for a
    transaction that holds pending offsets to end."""
    token = uuid.uuid4().hex[:8]
    topic, group = f"kip447-{token}", f"kip447-{token}"
    tp = TopicPartition(topic, 0)
    owners = f"t-{token}"

    async def scenario() -> tuple[int, int, bool, int]:
        await create_topics(kafka, [topic])
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group)
        producer = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=owners)
        await consumer.start()
        await producer.start()
        try:
            consumer.subscribe([topic])
            while not consumer.assignment():  # joined: a generation and a member id
                await consumer.getmany(timeout_ms=200)
            internals.check_group_transactions(producer, consumer)
            internals.commit_offsets_as_member(producer, consumer)

            async with producer.transaction():
                await producer.send_offsets_to_transaction({tp: 5}, group)
            first = (await internals.fetch_committed(consumer, [tp], owners=owners))[tp]

            # A zombie: the same member, one generation behind.
            coordinator = consumer._coordinator
            coordinator.generation -= 1
            try:
                await producer.begin_transaction()
                with pytest.raises(IllegalGenerationError):
                    await producer.send_offsets_to_transaction({tp: 7}, group)
                await producer.abort_transaction()
            finally:
                coordinator.generation += 1
            after_refusal = (await internals.fetch_committed(consumer, [tp], owners=owners))[tp]

            # Pending offsets: the fetch waits for the transaction to end, which the broker
            # lists as open each time the fetch asks (every 0.3 s here).
            await producer.begin_transaction()
            await producer.send_offsets_to_transaction({tp: 9}, group)
            fetch = asyncio.ensure_future(
                internals.fetch_committed(consumer, [tp], owners=owners, orphan_check=0.3)
            )
            await asyncio.sleep(1.0)
            waited = not fetch.done()
            await producer.commit_transaction()
            return first, after_refusal, waited, (await fetch)[tp]
        finally:
            await producer.stop()
            await consumer.stop()

    first, after_refusal, waited, stable = run(scenario())
    assert first == 5
    assert after_refusal == 5, "the stale generation's offsets were taken"
    assert waited, "OffsetFetch answered while a transaction held pending offsets"
    assert stable == 9


@pytest.mark.broker
def test_pending_offsets_no_open_transaction_of_the_owners_holds_are_read_past(
    kafka: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pending offsets whose transaction is not one of `owners` (the stand-in for the ended
    transaction Kafka's group coordinator can keep as pending): after `orphan_check` the
    coordinators list no open transaction of `owners`, and the committed offsets are read
    without require_stable, with one warning. The same pending offsets under the owners'
    prefix are waited for: the list sees the transaction open."""
    token = uuid.uuid4().hex[:8]
    topic, group = f"orphan-{token}", f"orphan-{token}"
    tp = TopicPartition(topic, 0)

    async def scenario() -> tuple[int, bool, bool]:
        await create_topics(kafka, [topic])
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group)
        stranger = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"other-{token}")
        await consumer.start()
        await stranger.start()
        try:
            async with stranger.transaction():
                await stranger.send_offsets_to_transaction({tp: 5}, group)
            await stranger.begin_transaction()
            await stranger.send_offsets_to_transaction({tp: 11}, group)
            async with asyncio.timeout(20):
                read = await internals.fetch_committed(
                    consumer, [tp], owners=f"cfn-{token}-", orphan_check=0.5
                )
            # The owners' own open transaction is waited for past several checks.
            fetch = asyncio.ensure_future(
                internals.fetch_committed(consumer, [tp], owners="other-", orphan_check=0.3)
            )
            await asyncio.sleep(2.0)
            waited = not fetch.done()
            fetch.cancel()
            open_listed = not await internals.no_open_transactions(consumer, f"other-{token}")
            await stranger.abort_transaction()
            # PrepareAbort until the markers are written, then CompleteAbort: not open.
            async with asyncio.timeout(10):
                while not await internals.no_open_transactions(consumer, f"other-{token}"):
                    await asyncio.sleep(0.1)
            return read[tp], waited, open_listed
        finally:
            await stranger.stop()
            await consumer.stop()

    with caplog.at_level("WARNING", logger="cfn.worker"):
        read, waited, open_listed = run(scenario())
    assert read == 5, "the pending offsets were taken for committed ones"
    warnings = [r.getMessage() for r in caplog.records if "no open transaction" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"cfn-{token}-*" in warnings[0]
    assert waited, "an open transaction of the owners was read past"
    assert open_listed
