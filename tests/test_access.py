"""Telling refusals from outages (cfn/access.py): the words for each refusal, and a probe that
concludes nothing from an address that does not answer."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiokafka import errors as Errors

from cfn.access import AccessDenied, denial, diagnose, probe
from cfn.security import KafkaSecurity, Secret

SASL_SSL = KafkaSecurity(
    protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="u", password=Secret("p")
)


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (Errors.TopicAuthorizationFailedError("cfn.events"), "access to a topic"),
        (Errors.GroupAuthorizationFailedError(), "access to the consumer group"),
        (Errors.TransactionalIdAuthorizationFailed("cfn-task-3"), "access to the transactional"),
        (Errors.ClusterAuthorizationFailedError(), "access to a cluster operation"),
        (Errors.SaslAuthenticationFailed(), "refused the SASL login"),
        (Errors.UnsupportedSaslMechanismError(), "does not offer this SASL mechanism"),
    ],
)
def test_each_refusal_is_named_with_what_to_do(error: Exception, words: str) -> None:
    refused = denial(error, "worker")
    assert refused is not None and words in str(refused)
    assert refused.cause == type(error).__name__
    if "access to" in words:
        assert "cfn acls --role worker" in str(refused)


@pytest.mark.parametrize(
    "error",
    [
        Errors.KafkaConnectionError("Unable to bootstrap"),
        Errors.NotLeaderForPartitionError(),
        Errors.OutOfOrderSequenceNumber(),
        TimeoutError(),
        ConnectionRefusedError(),
    ],
)
def test_outages_and_recoverable_errors_are_not_refusals(error: Exception) -> None:
    assert denial(error, "ingest") is None


def test_a_refusal_found_earlier_passes_through() -> None:
    found = AccessDenied("TLS: not accepted", "SSLCertVerificationError")
    assert denial(found, "worker") is found


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_probe_concludes_nothing_from_addresses_that_do_not_answer() -> None:
    """Each address is tried and none is called a refusal, so the caller waits (an outage): a
    refused connection, a name that does not resolve, a bootstrap the clients cannot read, a
    plain listener, and one that hangs up mid-handshake, as a broker going down does."""

    async def scenario() -> tuple[list[str | None], AccessDenied | None, int]:
        hung_up = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal hung_up
            hung_up += 1
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        going_down = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        cases = [
            (f"127.0.0.1:{closed_port()}", SASL_SSL),  # refused connection
            ("kafka-that-does-not-resolve.invalid", SASL_SSL),  # port 9092
            ("not a bootstrap::x", SASL_SSL),  # the clients report that
            (f"127.0.0.1:{closed_port()}", KafkaSecurity()),  # PLAINTEXT
            (going_down, SASL_SSL),
        ]
        found: list[str | None] = []
        try:
            for bootstrap, security in cases:
                try:
                    await probe(bootstrap, security, timeout=2)
                    found.append(None)
                except AccessDenied as refused:
                    found.append(str(refused))
            unreachable = Errors.KafkaConnectionError("Unable to bootstrap from [...]")
            concluded = await diagnose(unreachable, "worker", going_down, SASL_SSL)
        finally:
            server.close()
        return found, concluded, hung_up

    found, concluded, hung_up = asyncio.run(scenario())
    assert found == [None] * 5
    assert concluded is None, "an outage, not a refusal: the worker waits and retries"
    assert hung_up == 2, "the probe and the diagnosis each connected to the address"


def test_the_probe_names_a_tls_handshake_with_a_listener_that_is_not_tls() -> None:
    """A plain TCP server that answers garbage stands for a PLAINTEXT listener."""

    async def scenario() -> str:
        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"\x00\x00\x00\x10not a tls record")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(AccessDenied) as caught:
                await probe(f"127.0.0.1:{port}", SASL_SSL, timeout=5)
        finally:
            server.close()
        return str(caught.value)

    message = asyncio.run(scenario())
    assert message.startswith("TLS: the handshake with 127.0.0.1:") and "TLS listener" in message
