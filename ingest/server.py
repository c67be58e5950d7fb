"""Running the ingest: settings and secrets from the environment, served by uvicorn."""

from __future__ import annotations

import logging
import os
import sys

from prometheus_client import CollectorRegistry

from cfn import internals
from cfn.config import ConfigError
from cfn.health import quiet_client_logs
from cfn.ingest.app import IngestApp
from cfn.ingest.auth import SecretIndex, SecretsError
from cfn.ingest.http import IngestProtocol
from cfn.ingest.settings import UNAUTHENTICATED_ENV, WORKERS_ENV, IngestSettings
from cfn.ingest.sink import KafkaSink
from cfn.ingest.tls import server_context
from cfn.logs import LogSettings, configure
from cfn.runtime import tune_gc

log = logging.getLogger("cfn.ingest")


class StartupError(Exception):
    """The ingest must not start; the message says why (never a secret)."""


def load_secrets(settings: IngestSettings, allow_unauthenticated: bool) -> SecretIndex | None:
    """The secret index, or None only when running unauthenticated was asked for explicitly.

    Raises:
        StartupError: no secret is configured and unauthenticated mode was not asked for, or
            the secrets are malformed.
    """
    if settings.secret is None and settings.secrets_file is None:
        if allow_unauthenticated:
            return None
        raise StartupError(
            "no webhook secret configured: set CFN_INGEST_SECRET or CFN_INGEST_SECRETS_FILE "
            "(or pass --allow-unauthenticated, or set CFN_INGEST_ALLOW_UNAUTHENTICATED=1, to "
            "accept unauthenticated webhooks)"
        )
    try:
        return SecretIndex.load(settings.secret, settings.secrets_file)
    except SecretsError as exc:
        raise StartupError(str(exc)) from None


def create_app() -> IngestApp:
    """The uvicorn factory: every worker process builds its own app from the environment."""
    configure(LogSettings.from_env())  # (checked by `serve` before any process)
    settings = IngestSettings.from_env()
    tune_gc()  # in each worker process, before the app's own objects exist
    quiet_client_logs()
    secrets = load_secrets(settings, settings.allow_unauthenticated)
    sink = KafkaSink(
        settings.bootstrap,
        ack_timeout=settings.ack_timeout,
        linger_ms=settings.linger_ms,
        compression=settings.compression,
        security=settings.security,
        buffer_kbytes=settings.kafka_buffer_kbytes,
    )
    return IngestApp(settings, secrets, sink, CollectorRegistry())


def serve(workers: int = 1, allow_unauthenticated: bool = False) -> int:
    """Foreground entry for `cfn ingest`."""
    import uvicorn

    try:
        configure(LogSettings.from_env())
        internals.check_versions()
        internals.check_server()
        settings = IngestSettings.from_env()
        # The flag or CFN_INGEST_ALLOW_UNAUTHENTICATED=1: either one asks for it.
        secrets = load_secrets(settings, allow_unauthenticated or settings.allow_unauthenticated)
    except (ConfigError, StartupError, internals.InternalsError) as exc:
        print(f"cfn ingest: {exc}", file=sys.stderr)
        return 2
    if secrets is None:
        print(
            "cfn ingest: WARNING: running WITHOUT authentication (--allow-unauthenticated or "
            f"{UNAUTHENTICATED_ENV}=1); "
            "anyone who can reach this port can write to Kafka",
            file=sys.stderr,
        )
        os.environ[UNAUTHENTICATED_ENV] = "1"
    else:
        os.environ.pop(UNAUTHENTICATED_ENV, None)
    os.environ[WORKERS_ENV] = str(workers)  # each process binds an admin port of its own
    tls = settings.tls_certfile is not None
    config = uvicorn.Config(
        "cfn.ingest.server:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="uvloop",
        # cfn's own HTTP/1.1 protocol (ingest/http.py): the app called directly, no ASGI per
        # request; every connection state has a deadline, and connections are capped.
        http=IngestProtocol,
        proxy_headers=False,  # nothing reads the client address: no middleware in front
        lifespan="on",
        access_log=False,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through cfn's handler (CFN_LOG_FORMAT)
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        # Connections are capped by the protocol (CFN_INGEST_MAX_CONNECTIONS, a 503), requests
        # in flight by the app (429).
        limit_concurrency=None,
        # SIGTERM: stop taking connections, answer what is in flight, and exit within this
        # (the protocol cuts off every connection still open by then).
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
        # HTTPS when CFN_INGEST_TLS_CERTFILE/_KEYFILE are set: TLS is the transport's, so the
        # protocol's guards apply to the decrypted stream unchanged; SIGHUP reloads the files.
        ssl_certfile=str(settings.tls_certfile) if tls else None,
        ssl_keyfile=str(settings.tls_keyfile) if tls else None,
        ssl_context_factory=server_context if tls else None,
    )
    if workers > 1:
        supervisor = internals.ingest_supervisor(log)(config, sockets=[config.bind_socket()])
        supervisor.run()
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
