"""The ingest process's settings: one frozen object built from the environment."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cfn.config import COMPRESSIONS, ConfigError, Env, topic_names
from cfn.ingest.fairness import TenantLimits
from cfn.security import PLAINTEXT, KafkaSecurity
from cfn.topics import RAW_MAX_MESSAGE_BYTES

# Set by `cfn ingest` for the processes it starts (uvicorn's workers inherit its environment):
# how many there are, each binding an admin port of its own, and --allow-unauthenticated.
WORKERS_ENV = "CFN_INGEST_WORKERS"
UNAUTHENTICATED_ENV = "CFN_INGEST_ALLOW_UNAUTHENTICATED"

# The largest CFN_INGEST_MAX_BODY: the raw record's limit less room for its key and headers.
MAX_BODY_LIMIT = RAW_MAX_MESSAGE_BYTES - 64 * 1024


@dataclass(frozen=True)
class IngestSettings:
    """Everything `cfn ingest` reads from CFN_* variables (see the README's table)."""

    host: str = "127.0.0.1"
    port: int = 8080
    # /metrics, /readyz and /openapi.json: never on the public port
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "cfn."
    secret: str | None = field(default=None, repr=False)  # never in a repr or a log
    secrets_file: Path | None = None
    max_body: int = 256 * 1024  # Cloudflare bodies are a few KB; bounds memory held
    ack_timeout: float = 3.0
    max_inflight: int = 512
    # A tenant's limits when the secrets file sets none (ingest/fairness.py, docs/fairness.md).
    tenant_max_inflight: int | None = None  # None: the global max_inflight
    tenant_rate: float = 0.0  # requests per second; 0: no rate limit
    tenant_burst: int | None = None  # None: one second's worth of tenant_rate
    throttle_delay: float = 0.5  # a tenant's 429 is held 0.5-1.5x this long (0: at once)
    body_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 5.0
    write_timeout: float = 10.0  # a client that reads nothing of an answer this long is cut off
    keep_alive_timeout: float = 15.0
    max_connections: int = 1024  # per process; one over it is answered 503 and closed
    shutdown_timeout: float = 10.0  # SIGTERM to exit, whatever the clients do
    kafka_buffer_kbytes: int = 65536  # librdkafka's queue: records not yet acknowledged
    linger_ms: int = 1
    compression: str = "lz4"
    partitions: int = 12
    replication: int = 1
    retry_after: int = 5
    security: KafkaSecurity = PLAINTEXT
    tls_certfile: Path | None = None  # HTTPS at the ingest itself (no proxy in front)
    tls_keyfile: Path | None = None
    workers: int = 1  # processes of `cfn ingest --workers`
    allow_unauthenticated: bool = False  # CFN_INGEST_ALLOW_UNAUTHENTICATED=1, or the flag

    @functools.cached_property
    def raw_topic(self) -> str:  # read per request: computed once
        return topic_names(self.topic_prefix)["raw"]

    @functools.cached_property
    def dlq_topic(self) -> str:
        return topic_names(self.topic_prefix)["dlq"]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestSettings:
        environ = os.environ if environ is None else environ
        env = Env(environ)
        secrets_file = env.raw("CFN_INGEST_SECRETS_FILE")
        return cls(
            host=env.text("CFN_INGEST_HOST", cls.host),
            port=env.integer("CFN_INGEST_PORT", cls.port),
            admin_host=env.text("CFN_INGEST_ADMIN_HOST", cls.admin_host),
            admin_port=env.integer("CFN_INGEST_ADMIN_PORT", cls.admin_port),
            bootstrap=env.text("CFN_KAFKA_BOOTSTRAP", cls.bootstrap),
            topic_prefix=env.text("CFN_TOPIC_PREFIX", cls.topic_prefix),
            secret=env.raw("CFN_INGEST_SECRET"),
            secrets_file=Path(secrets_file) if secrets_file else None,
            max_body=env.integer("CFN_INGEST_MAX_BODY", cls.max_body, minimum=1),
            ack_timeout=env.duration("CFN_INGEST_ACK_TIMEOUT", cls.ack_timeout),
            max_inflight=env.integer("CFN_INGEST_MAX_INFLIGHT", cls.max_inflight, minimum=1),
            tenant_max_inflight=_optional(env, "CFN_INGEST_TENANT_MAX_INFLIGHT"),
            tenant_rate=env.number("CFN_INGEST_TENANT_RATE", cls.tenant_rate),
            tenant_burst=_optional(env, "CFN_INGEST_TENANT_BURST"),
            throttle_delay=env.duration("CFN_INGEST_THROTTLE_DELAY", cls.throttle_delay),
            body_timeout=env.duration("CFN_INGEST_BODY_TIMEOUT", cls.body_timeout),
            max_header_bytes=env.integer(
                "CFN_INGEST_MAX_HEADER_BYTES", cls.max_header_bytes, minimum=1024
            ),
            header_timeout=env.duration("CFN_INGEST_HEADER_TIMEOUT", cls.header_timeout),
            write_timeout=env.duration("CFN_INGEST_WRITE_TIMEOUT", cls.write_timeout),
            keep_alive_timeout=env.duration(
                "CFN_INGEST_KEEP_ALIVE_TIMEOUT", cls.keep_alive_timeout
            ),
            max_connections=env.integer(
                "CFN_INGEST_MAX_CONNECTIONS", cls.max_connections, minimum=1
            ),
            shutdown_timeout=env.duration("CFN_INGEST_SHUTDOWN_TIMEOUT", cls.shutdown_timeout),
            kafka_buffer_kbytes=env.integer(
                "CFN_INGEST_KAFKA_BUFFER_KBYTES", cls.kafka_buffer_kbytes, minimum=1024
            ),
            linger_ms=env.integer("CFN_INGEST_LINGER_MS", cls.linger_ms),
            compression=env.choice("CFN_INGEST_COMPRESSION", cls.compression, COMPRESSIONS),
            partitions=env.integer("CFN_PARTITIONS", cls.partitions, minimum=1),
            replication=env.integer("CFN_REPLICATION", cls.replication, minimum=1),
            security=KafkaSecurity.from_env(environ),
            tls_certfile=_tls_file(env, "CFN_INGEST_TLS_CERTFILE"),
            tls_keyfile=_tls_file(env, "CFN_INGEST_TLS_KEYFILE"),
            workers=env.integer(WORKERS_ENV, cls.workers, minimum=1),
            allow_unauthenticated=env.raw(UNAUTHENTICATED_ENV) == "1",
        )._checked()

    @property
    def tenant_defaults(self) -> TenantLimits:
        """The limits of a tenant whose entry in the secrets file sets none."""
        return TenantLimits(self.tenant_max_inflight, self.tenant_rate, self.tenant_burst)

    def _checked(self) -> IngestSettings:
        if self.max_body > MAX_BODY_LIMIT:
            raise ConfigError(
                f"CFN_INGEST_MAX_BODY must be at most {MAX_BODY_LIMIT} bytes: a body over it "
                "would not fit the raw topic's records (max.message.bytes "
                f"{RAW_MAX_MESSAGE_BYTES}, less room for the key and headers)"
            )
        if not self.tenant_rate < 1e9:  # also refuses "inf", which has no bucket size
            raise ConfigError("CFN_INGEST_TENANT_RATE must be below 1e9 requests per second")
        if self.tenant_burst is not None and not self.tenant_rate:
            raise ConfigError("CFN_INGEST_TENANT_BURST needs CFN_INGEST_TENANT_RATE above 0")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            missing = (
                "CFN_INGEST_TLS_KEYFILE" if self.tls_keyfile is None else "CFN_INGEST_TLS_CERTFILE"
            )
            raise ConfigError(f"{missing} is required with the other one (HTTPS)")
        if self.tls_certfile is not None and self.tls_keyfile is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    str(self.tls_certfile), str(self.tls_keyfile)
                )
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    "CFN_INGEST_TLS_CERTFILE / CFN_INGEST_TLS_KEYFILE: not a PEM certificate "
                    f"and its key ({exc})"
                ) from None
        return self


def _optional(env: Env, name: str) -> int | None:
    """A whole number >= 1, or None when the variable is unset."""
    return None if env.raw(name) is None else env.integer(name, 1, minimum=1)


def _tls_file(env: Env, name: str) -> Path | None:
    value = env.raw(name)
    if value is None:
        return None
    if not Path(value).is_file():
        raise ConfigError(f"{name}: no such file {value}")
    return Path(value)
