"""Shared fixtures: one real Apache Kafka for the whole run, unique names for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cfn.shell.broker import BrokerError, LocalKafka
from tests.kafka_util import create_topics, run
from tests.services import free_block

CONTROLLER_OFFSET = 10000  # cfn.shell.broker's controller port is the node's port + 10000


def free_port_block(size: int) -> int:
    """A first port p such that p..p+size-1 and their controller ports (+10000) are all free."""
    return free_block(size, spread=(0, CONTROLLER_OFFSET))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: CFN_KAFKA_BOOTSTRAP if set, else one we start.

    A broker that cannot start FAILS every test using it, with the reason; it never skips.
    """
    existing = os.environ.get("CFN_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"), port=free_port_block(1))
    try:
        broker.start()
    except BrokerError as exc:
        broker.stop()
        pytest.fail(f"the test broker could not start: {exc}", pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Makes names no other test uses: topics, groups, app ids."""
    token = uuid.uuid4().hex[:10]
    return lambda stem: f"{stem}-{token}"


@pytest.fixture
def topic_factory(kafka: str, unique: Callable[[str], str]) -> Callable[..., str]:
    """Creates a uniquely named topic on the session broker and returns its name."""

    def make(stem: str, partitions: int = 1) -> str:
        name = unique(stem)
        run(create_topics(kafka, [name], partitions))
        return name

    return make


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    base = free_block(count)
    return list(range(base, base + count))


# SCRAM users the secured broker formats in (quicker than add_scram_user, which starts a JVM).
SECURE_USERS = ("alice", "nobody", "ingest", "worker", "reconcile")


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One secured broker for the session (SASL_SSL + mTLS, StandardAuthorizer, no ACLs).

    `secure_kafka.client_options(user)` and `tests.secure_kafka.mtls_options(secure_kafka, cn)`
    give aiokafka keyword arguments; the users of SECURE_USERS exist from the start;
    `tests.secure_kafka.apply_acls` grants. It never skips: a
    broker that cannot start fails the tests using it.
    """
    port, controller, ssl_port = free_ports(3)
    broker = LocalKafka(
        data_dir=tmp_path_factory.mktemp("secure-kafka"),
        port=port,
        controller_port=controller,
        ssl_port=ssl_port,
        secure=True,
        users=SECURE_USERS,
    )
    try:
        broker.start()
    except BrokerError as exc:
        broker.stop()
        pytest.fail(f"the secured test broker could not start: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes a broker fixture is a broker test, whether its module says so or not,
    so `make unit` never starts Kafka."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any(name in names for name in ("kafka", "secure_kafka", "cluster")):
            item.add_marker(pytest.mark.broker)
