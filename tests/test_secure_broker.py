"""The secured local broker: SASL_SSL with SCRAM-SHA-512, mutual TLS, StandardAuthorizer."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from cfn.kafka import aiokafka_options
from cfn.security import KafkaSecurity
from cfn.shell.acls import Acl
from cfn.shell.broker import BrokerError, LocalKafka, connection_help
from tests.conftest import free_port_block, free_ports
from tests.kafka_util import run
from tests.secure_kafka import (
    add_scram_user,
    apply_acls,
    client_certificate,
    mtls_options,
    trusting_context,
    untrusted_ca_file,
)
from tests.services import cfn_env

pytestmark = pytest.mark.broker


async def create_topic(kafka: LocalKafka, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce_and_consume(options: dict[str, Any], topic: str, group: str) -> list[bytes]:
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
    try:
        await producer.start()
        await producer.send_and_wait(topic, b"one", key=b"k")
        await producer.send_and_wait(topic, b"two", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False, **options
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < 2:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values += [r.value for r in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


def reader_writer(principal: str, topic: str, group: str) -> list[Acl]:
    return [
        Acl("TOPIC", topic, "LITERAL", "WRITE", principal),
        Acl("TOPIC", topic, "LITERAL", "READ", principal),
        Acl("GROUP", group, "LITERAL", "READ", principal),
    ]


def test_scram_client_produces_and_consumes_with_acls(
    secure_kafka: LocalKafka, unique: Callable[[str], str]
) -> None:
    topic, group = unique("scram"), unique("scram-group")
    run(create_topic(secure_kafka, topic))
    apply_acls(secure_kafka, reader_writer("User:alice", topic, group))
    assert run(produce_and_consume(secure_kafka.client_options("alice"), topic, group)) == [
        b"one",
        b"two",
    ]


def test_principal_without_acls_is_refused(
    secure_kafka: LocalKafka, unique: Callable[[str], str]
) -> None:
    topic = unique("noacl")
    run(create_topic(secure_kafka, topic))

    async def write() -> None:
        producer = AIOKafkaProducer(**secure_kafka.client_options("nobody"))
        await producer.start()  # authenticated: connecting needs no ACL
        try:
            await producer.send_and_wait(topic, b"x")
        finally:
            await producer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        run(write())


def test_a_user_added_at_runtime_authenticates_and_is_refused_without_acls(
    secure_kafka: LocalKafka, unique: Callable[[str], str]
) -> None:
    topic, user = unique("runtime-user"), unique("carol")
    run(create_topic(secure_kafka, topic))
    password = add_scram_user(secure_kafka, user)
    assert secure_kafka.password(user) == password

    async def write() -> None:
        producer = AIOKafkaProducer(**secure_kafka.client_options(user))
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"x")
        finally:
            await producer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        run(write())
    apply_acls(secure_kafka, [Acl("TOPIC", topic, "LITERAL", "WRITE", f"User:{user}")])
    run(write())


async def refused(options: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(request_timeout_ms=5000, **options)
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


def test_wrong_password_is_refused(
    secure_kafka: LocalKafka, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="aiokafka"):
        run(refused(secure_kafka.client_options("alice", password="not-the-password")))
    assert "SaslAuthenticationFailed" in caplog.text
    assert "invalid credentials" in caplog.text


def test_untrusted_ca_is_refused(
    secure_kafka: LocalKafka, caplog: pytest.LogCaptureFixture
) -> None:
    untrusted = untrusted_ca_file(secure_kafka)
    with caplog.at_level(logging.ERROR, logger="aiokafka"):
        run(refused(secure_kafka.client_options("alice", cafile=untrusted)))
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    # And on the mTLS port, below any Kafka client: the handshake itself fails.
    host, port = secure_kafka.ssl_bootstrap.split(",")[0].split(":")
    context = ssl.create_default_context(cafile=str(untrusted))
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass


def test_mtls_client_is_the_user_of_its_cn(
    secure_kafka: LocalKafka, unique: Callable[[str], str]
) -> None:
    topic, group, cn = unique("mtls"), unique("mtls-group"), unique("svc")
    run(create_topic(secure_kafka, topic))
    options = mtls_options(secure_kafka, cn)
    # ACLs for another name do not help: the principal is exactly User:<CN>. (Holding no WRITE
    # anywhere, its idempotent producer is refused its producer id: KIP-679.)
    apply_acls(secure_kafka, reader_writer(f"User:{cn}-other", topic, group))
    with pytest.raises(ClusterAuthorizationFailedError):
        run(produce_and_consume(options, topic, group))
    apply_acls(secure_kafka, reader_writer(f"User:{cn}", topic, group))
    assert run(produce_and_consume(options, topic, group)) == [b"one", b"two"]


def test_mtls_listener_requires_a_client_certificate(secure_kafka: LocalKafka) -> None:
    options = mtls_options(secure_kafka, "unused")
    options["ssl_context"] = trusting_context(secure_kafka)  # trusts the CA, presents nothing
    run(refused(options))


def test_secrets_stay_in_private_files(secure_kafka: LocalKafka) -> None:
    passwords = [secure_kafka.password(u) for u in ("admin", "alice", "ingest")]
    for private in (
        secure_kafka.passwords_file,
        secure_kafka.admin_properties,
        secure_kafka.tls_dir / "ca.key",
        secure_kafka.tls_dir / "broker-keystore.pem",
        secure_kafka.password_file("alice"),
    ):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert secure_kafka.password_file("alice").read_text() == secure_kafka.password("alice")
    shown = connection_help(secure_kafka)
    for text in (
        shown,
        (secure_kafka.members[0].data_dir / "server.properties").read_text(),
        secure_kafka.members[0].log_file.read_text(errors="replace"),
    ):
        assert not any(p in text for p in passwords)
    for name in (
        "CFN_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "CFN_KAFKA_SASL_MECHANISM=SCRAM-SHA-512",
        "CFN_KAFKA_SASL_USERNAME=admin",
        "CFN_KAFKA_SASL_PASSWORD_FILE=",
        f"CFN_KAFKA_SSL_CAFILE={secure_kafka.ca_file.resolve()}",
        "CFN_KAFKA_SSL_CERTFILE",
        "CFN_KAFKA_SSL_KEYFILE",
        secure_kafka.bootstrap,
        secure_kafka.ssl_bootstrap,
    ):
        assert name in shown


def test_the_broker_certificate_names_loopback(secure_kafka: LocalKafka) -> None:
    host, port = secure_kafka.bootstrap.split(",")[0].split(":")
    for server_hostname in ("127.0.0.1", "localhost"):
        context = trusting_context(secure_kafka)  # check_hostname is on
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_the_broker_cn_is_not_issued_to_clients(secure_kafka: LocalKafka) -> None:
    with pytest.raises(BrokerError):
        client_certificate(secure_kafka, "cfn-broker")


def test_plaintext_cluster_has_no_security_api(tmp_path: Any) -> None:
    plain = LocalKafka(data_dir=tmp_path)
    assert "SASL_SSL" not in plain._properties(plain.members[0])
    with pytest.raises(BrokerError):
        _ = plain.ca_file


def test_cfn_broker_secure_prints_settings_that_connect(tmp_path: Path) -> None:
    """`cfn broker --secure` as a user runs it: the exports it prints are enough for a cfn
    client to log in; no password is printed; SIGTERM stops it cleanly."""
    port = free_port_block(1)  # its controller port (+10000) is free and in range too
    (ssl_port,) = free_ports(1)
    command = [
        sys.executable, "-m", "cfn", "broker", "--secure", "--port", str(port),
        "--ssl-port", str(ssl_port), "--data-dir", str(tmp_path / "kafka"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cfn_env({})
    )
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")))
    reader.start()  # a stalled broker fails the deadline below instead of a blocked read
    try:
        deadline = time.monotonic() + 120
        while not any("CFN_KAFKA_SSL_CAFILE=" in line for line in list(lines)):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            time.sleep(0.1)
        exports = dict(
            line.split("export ", 1)[1].strip().split("=", 1) for line in lines if "export " in line
        )
        security = KafkaSecurity.from_env(exports)

        async def topics() -> set[str]:
            admin = AIOKafkaAdminClient(
                **aiokafka_options(exports["CFN_KAFKA_BOOTSTRAP"], security)
            )
            await admin.start()
            try:
                return set(await admin.list_topics())
            finally:
                await admin.close()

        assert isinstance(run(topics()), set)
        password = Path(exports["CFN_KAFKA_SASL_PASSWORD_FILE"]).read_text().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=30)
        stdout.close()
    output = "".join(lines)
    assert process.returncode == 0, output[-2000:]
    assert password and password not in output
    assert "cfn broker: stopped" in output
