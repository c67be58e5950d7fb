"""The one builder of every Kafka client's settings: bootstrap, TLS and SASL from `KafkaSecurity`.

aiokafka's clients take keyword arguments (`aiokafka_options`), librdkafka's producer a dict of
dotted names (`librdkafka_config`), Kafka's own command-line tools a properties file
(`java_properties`). No other module names a security setting (tests/test_layout.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cfn.security import KafkaSecurity

# The keyword arguments and dotted names only this module may set.
AIOKAFKA_KEYS = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    }
)
LIBRDKAFKA_KEYS = frozenset(
    {
        "bootstrap.servers",
        "security.protocol",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.endpoint.identification.algorithm",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
        "sasl.jaas.config",
    }
)
_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def connection_options(security: KafkaSecurity) -> dict[str, Any]:
    """aiokafka's security keyword arguments alone, for a bare connection (`cfn.access`).

    Each call makes a new TLS context: build a client's options once and share them.
    """
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.tls:
        options["ssl_context"] = security.ssl_context()
    if security.sasl:
        assert security.password is not None  # checked at start
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.username
        options["sasl_plain_password"] = security.password.reveal()
    return options


def aiokafka_options(bootstrap: str, security: KafkaSecurity, **options: Any) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin, client).

    Args:
        bootstrap: the brokers, `host:port[,host:port...]`.
        security: TLS and SASL (CFN_KAFKA_*).
        options: the client's own settings (group, isolation, timeouts, ids).

    Raises:
        ValueError: `options` names a connection setting; those come from here only.
    """
    _refuse(options, AIOKAFKA_KEYS)
    return {"bootstrap_servers": bootstrap, **connection_options(security), **options}


def librdkafka_config(
    bootstrap: str, security: KafkaSecurity, options: Mapping[str, Any]
) -> dict[str, Any]:
    """librdkafka's configuration (the ingest's producer): `options` and the connection.

    Raises:
        ValueError: `options` names a connection setting; those come from here only.
    """
    _refuse(options, LIBRDKAFKA_KEYS)
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, **options}
    config["security.protocol"] = security.protocol.lower()
    if security.tls:
        # "probe": librdkafka looks for the system's trust store, as ssl_context() uses it.
        config["ssl.ca.location"] = "probe" if security.cafile is None else str(security.cafile)
        if security.certfile is not None and security.keyfile is not None:
            config["ssl.certificate.location"] = str(security.certfile)
            config["ssl.key.location"] = str(security.keyfile)
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if security.check_hostname else "none"
        )
    if security.sasl:
        assert security.password is not None  # checked at start
        config["sasl.mechanism"] = security.sasl_mechanism
        config["sasl.username"] = security.username
        config["sasl.password"] = security.password.reveal()
    return config


def java_properties(security: KafkaSecurity) -> dict[str, str]:
    """A Java client's properties for Kafka's own tools (`--command-config`): SASL and a PEM
    trust store; it holds the password, so write it to a file only its owner reads.

    Raises:
        ValueError: mutual TLS, which these properties do not carry.
    """
    if security.certfile is not None:
        raise ValueError("a client certificate does not fit Kafka's tools' properties here")
    properties = {"security.protocol": security.protocol}
    if security.sasl:
        assert security.password is not None and security.sasl_mechanism is not None
        module = _JAAS_MODULES[security.sasl_mechanism]
        properties["sasl.mechanism"] = security.sasl_mechanism
        properties["sasl.jaas.config"] = (
            f"{module} required username={_quoted(security.username or '')} "
            f"password={_quoted(security.password.reveal())};"
        )
    if security.tls:
        if security.cafile is not None:
            properties["ssl.truststore.type"] = "PEM"
            properties["ssl.truststore.location"] = str(security.cafile)
        if not security.check_hostname:
            properties["ssl.endpoint.identification.algorithm"] = ""
    return properties


def _quoted(value: str) -> str:
    """A JAAS option value, in double quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _refuse(options: Mapping[str, Any], keys: frozenset[str]) -> None:
    given = sorted(set(options) & keys)
    if given:
        raise ValueError(f"{', '.join(given)}: connection settings come from cfn.kafka only")
