"""What the tests do to a secure `LocalKafka` (cfn/shell/broker.py): SCRAM users added while it
runs, client certificates, a CA it does not trust, and ACLs granted and removed as its admin."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cfn.kafka import aiokafka_options
from cfn.security import KafkaSecurity
from cfn.shell.acls import Acl
from cfn.shell.broker import (
    BROKER_CN,
    SCRAM_ITERATIONS,
    SCRAM_MECHANISM,
    BrokerError,
    LocalKafka,
    _write_private,
    cache_dir,
    make_ca,
    sign_certificate,
)


def trusting_context(kafka: LocalKafka) -> ssl.SSLContext:
    """A client TLS context that trusts the broker's CA, checks host names, presents nothing."""
    return ssl.create_default_context(cafile=str(kafka.ca_file))


def client_certificate(kafka: LocalKafka, cn: str) -> tuple[Path, Path]:
    """(certfile, keyfile) of a client certificate for `cn`, signed by the broker's CA (made
    once per CN). On `ssl_bootstrap` it authenticates as User:<cn>."""
    if cn == BROKER_CN:
        raise BrokerError(f"{BROKER_CN!r} is the broker's own (super user) name")
    folder = kafka.tls_dir / "clients"
    cert, key = folder / f"{cn}.pem", folder / f"{cn}.key"
    if not (cert.exists() and key.exists()):
        sign_certificate(kafka.ca_file, kafka.tls_dir / "ca.key", folder, cn)
    return cert, key


def mtls_options(kafka: LocalKafka, cn: str) -> dict[str, Any]:
    """aiokafka keyword arguments for a client of `ssl_bootstrap` that is User:<cn>."""
    cert, key = client_certificate(kafka, cn)
    security = KafkaSecurity(protocol="SSL", cafile=kafka.ca_file, certfile=cert, keyfile=key)
    return aiokafka_options(kafka.ssl_bootstrap, security)


def untrusted_ca_file(kafka: LocalKafka) -> Path:
    """A CA certificate that did not sign the broker's: clients trusting it must fail."""
    folder = kafka.tls_dir / "untrusted"
    if not (folder / "ca.pem").exists():
        make_ca(folder, "cfn untrusted CA")
    return folder / "ca.pem"


def add_scram_user(kafka: LocalKafka, name: str) -> str:
    """Create a SCRAM-SHA-512 user with a random password on the running cluster (Kafka's
    ConfigCommand as admin; a JVM start, a few seconds) and return the password, which is also
    kept in `passwords_file`."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise BrokerError(f"{name!r} is not a plain user name (letters, digits, - _ .)")
    password = secrets.token_hex(24)
    # The password goes to the tool in a 0600 file, not on its command line.
    config = kafka.data_dir / "secrets" / f"scram-{name}.properties"
    _write_private(config, f"{SCRAM_MECHANISM}=iterations={SCRAM_ITERATIONS},password={password}\n")
    try:
        _tool(
            kafka,
            "org.apache.kafka.tools.ConfigCommand",
            "--bootstrap-server", kafka.bootstrap,
            "--command-config", str(kafka.admin_properties),
            "--alter", "--entity-type", "users", "--entity-name", name,
            "--add-config-file", str(config),
        )  # fmt: skip
    finally:
        config.unlink(missing_ok=True)
    kafka._save_passwords({**kafka._passwords(), name: password})
    return password


def _tool(kafka: LocalKafka, main: str, *args: str) -> str:
    """Run one of Kafka's command-line tools from the jars; its stdout, or a BrokerError."""
    result = subprocess.run(
        kafka._java(cache_dir() / "libs", main, *args),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise BrokerError(f"{main.rsplit('.', 1)[-1]} failed: " + " | ".join(tail))
    return result.stdout


def apply_acls(kafka: LocalKafka, acls: Iterable[Acl], timeout: float = 30.0) -> None:
    """Create ACL bindings as admin, and return once the broker enforces them."""
    asyncio.run(_alter_acls(kafka.client_options(), list(acls), create=True, timeout=timeout))


def remove_acls(kafka: LocalKafka, acls: Iterable[Acl], timeout: float = 30.0) -> None:
    """Delete exactly these ACL bindings as admin, once the broker no longer has them."""
    asyncio.run(_alter_acls(kafka.client_options(), list(acls), create=False, timeout=timeout))


# Kafka's wire codes (org.apache.kafka.common.resource / acl).
_RESOURCE_CODE = {"TOPIC": 2, "GROUP": 3, "CLUSTER": 4, "TRANSACTIONAL_ID": 5}
_PATTERN_CODE = {"LITERAL": 3, "PREFIXED": 4}
_OPERATION_CODE = {
    "ALL": 2,
    "READ": 3,
    "WRITE": 4,
    "CREATE": 5,
    "DELETE": 6,
    "ALTER": 7,
    "DESCRIBE": 8,
    "DESCRIBE_CONFIGS": 10,
    "IDEMPOTENT_WRITE": 12,
}
_ANY = 1
_ALLOW, _DENY = 3, 2


def _binding(acl: Acl) -> tuple[int, str, int, str, str, int, int]:
    return (
        _RESOURCE_CODE[acl.resource_type],
        acl.name,
        _PATTERN_CODE[acl.pattern],
        acl.principal,
        acl.host,
        _OPERATION_CODE[acl.operation],
        _ALLOW if acl.allow else _DENY,
    )


async def _alter_acls(
    options: dict[str, Any], acls: list[Acl], *, create: bool, timeout: float
) -> None:
    """Create or delete ACL bindings with CreateAcls / DeleteAcls (aiokafka 0.14's admin client
    has no ACL calls, but ships the protocol's requests), then wait until DescribeAcls, answered
    by the broker's authorizer, shows the change: from then on it is enforced."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.admin import (
        CreateAclsRequest,
        DeleteAclsRequest,
        DescribeAclsRequest,
    )

    client = AIOKafkaClient(request_timeout_ms=int(timeout * 1000), **options)
    await client.bootstrap()
    try:
        node = client.get_random_node()
        for acl in acls:
            request = (CreateAclsRequest if create else DeleteAclsRequest)(*_binding(acl))
            response = await client.send(node, request)
            results = response.creation_responses if create else response.filter_responses
            for error_code, error_message, *_ in results:
                if error_code:
                    verb = "creating" if create else "deleting"
                    raise BrokerError(f"{verb} {acl} failed: {error_code} {error_message}")
        deadline = time.monotonic() + timeout
        for principal in sorted({acl.principal for acl in acls}):
            wanted = {_binding(a) for a in acls if a.principal == principal}
            while True:
                describe = DescribeAclsRequest(_ANY, None, _ANY, principal, None, _ANY, _ANY)
                answer = await client.send(node, describe)
                present = {
                    (rtype, name, pattern, p, host, op, perm)
                    for rtype, name, pattern, entries in answer.resources
                    for p, host, op, perm in entries
                }
                if (wanted <= present) if create else not (wanted & present):
                    break
                if time.monotonic() > deadline:
                    raise BrokerError(f"ACLs of {principal} not applied after {timeout:.0f}s")
                await asyncio.sleep(0.05)
    finally:
        await client.close()
