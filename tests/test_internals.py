"""cfn.internals: the aiokafka and uvicorn internals cfn uses exist in what is installed.

These fail when an upgrade moves one, before any request or commit would."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cfn import internals
from cfn.ingest.protocol import GuardedHttpToolsProtocol
from tests.kafka_util import run


def test_installed_versions_are_the_tested_ones() -> None:
    internals.check_versions()


def test_producer_internals_exist() -> None:
    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", enable_idempotence=True)
        try:
            internals.check_producer(producer)
            assert internals.sender_alive(producer)  # not started: nothing has died
            internals.abandon(producer, RuntimeError("nothing pending"))
            assert internals.accumulator(producer) is not None
        finally:
            await producer.stop()

    asyncio.run(scenario())


def test_transactional_producer_internals_exist() -> None:
    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-0")
        try:
            internals.check_transactional(producer)
            assert internals.transaction_error(producer) is None  # no transaction broke
        finally:
            await producer.stop()

    asyncio.run(scenario())
    with pytest.raises(internals.InternalsError, match=r"_txn_manager\._transaction_waiter"):
        internals.check_transactional(object())


def test_uvicorn_protocol_internals_exist() -> None:
    internals.check_protocol(GuardedHttpToolsProtocol)


def test_a_missing_internal_is_named() -> None:
    with pytest.raises(internals.InternalsError, match=r"_message_accumulator\.add_message"):
        internals.check_producer(object())
    with pytest.raises(internals.InternalsError, match="not uvicorn's HttpToolsProtocol"):
        internals.check_protocol(int)


@pytest.mark.broker
def test_consumer_internals_exist_and_work(kafka: str) -> None:
    async def scenario() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id="cfn-internals-check")
        await consumer.start()
        try:
            internals.check_consumer(consumer)
            cluster = await internals.fetch_metadata(consumer)
            committed = await internals.fetch_committed(consumer, [])
            assert committed == {}
            return len(cluster.brokers())
        finally:
            await consumer.stop()

    assert run(scenario()) >= 1
