"""The local Apache Kafka: round trips, a three-node cluster, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cfn.shell.broker import LocalKafka
from tests.conftest import free_port_block
from tests.kafka_util import drain, produce, run

pytestmark = pytest.mark.broker


def test_produce_and_consume_round_trip(kafka: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("roundtrip", partitions=3)
    items = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(50)]
    run(produce(kafka, topic, items))
    records = run(drain(kafka, topic, expect=50))
    assert sorted((r.key, r.value) for r in records) == sorted(items)


@pytest.mark.faults  # the 3-node cluster the fault tests stand on; three JVM starts
def test_three_node_cluster_accepts_acks_all_with_min_isr_2(tmp_path: Path) -> None:
    cluster = LocalKafka(data_dir=tmp_path / "k3", port=free_port_block(3), nodes=3, heap="384m")
    try:
        cluster.start(timeout=150)

        async def scenario() -> list[int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
            await admin.start()
            try:
                await admin.create_topics(
                    [NewTopic("rf3", 3, 3, topic_configs={"min.insync.replicas": "2"})]
                )
            finally:
                await admin.close()
            producer = AIOKafkaProducer(
                bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
            )
            await producer.start()
            try:
                offsets = []
                for i in range(30):
                    meta = await producer.send_and_wait("rf3", key=b"%d" % i, value=b"x")
                    offsets.append(meta.offset)
                return offsets
            finally:
                await producer.stop()

        offsets = run(scenario())
        assert len(offsets) == 30
        records = run(drain(cluster.bootstrap, "rf3", expect=30))
        assert len(records) == 30
    finally:
        cluster.stop()


def test_missing_java_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "CFN_KAFKA_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "cfn", "broker", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "`java` was not found on PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_proxied_clients_are_sent_to_the_proxy_and_brokers_talk_directly(tmp_path: Path) -> None:
    """`proxy_port` (the nemesis's Toxiproxy): only the client listener is advertised there."""
    kafka = LocalKafka(tmp_path, port=20000, nodes=3, proxy_port=21000, internal_port=22000)
    assert kafka.bootstrap == "127.0.0.1:21000,127.0.0.1:21001,127.0.0.1:21002"
    assert kafka.direct_bootstrap == "127.0.0.1:22000,127.0.0.1:22001,127.0.0.1:22002"
    props = dict(line.split("=", 1) for line in kafka._properties(kafka.members[1]).splitlines())
    assert props["listeners"].startswith("PLAINTEXT://127.0.0.1:20001,INTERNAL://127.0.0.1:22001")
    assert props["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:21001,INTERNAL://127.0.0.1:22001"
    )
    assert props["inter.broker.listener.name"] == "INTERNAL"
    plain = LocalKafka(tmp_path, port=20000, nodes=1)
    assert plain.bootstrap == plain.direct_bootstrap == "127.0.0.1:20000"
