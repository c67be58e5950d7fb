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
from cfn.ingest.settings import IngestSettings
from cfn.ingest.sink import KafkaSink
from cfn.runtime import tune_gc

log = logging.getLogger("cfn.ingest")

UNAUTHENTICATED_ENV = "CFN_INGEST_ALLOW_UNAUTHENTICATED"


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
            "(or pass --allow-unauthenticated to accept unauthenticated webhooks)"
        )
    try:
        return SecretIndex.load(settings.secret, settings.secrets_file)
    except SecretsError as exc:
        raise StartupError(str(exc)) from None


def create_app() -> IngestApp:
    """The uvicorn factory: every worker process builds its own app from the environment."""
    settings = IngestSettings.from_env()
    tune_gc()  # in each worker process, before the app's own objects exist
    quiet_client_logs()
    allow = os.environ.get(UNAUTHENTICATED_ENV) == "1"
    secrets = load_secrets(settings, allow)
    sink = KafkaSink(
        settings.bootstrap,
        ack_timeout=settings.ack_timeout,
        linger_ms=settings.linger_ms,
        compression=settings.compression,
        security=settings.security,
    )
    return IngestApp(settings, secrets, sink, CollectorRegistry())


def serve(workers: int = 1, allow_unauthenticated: bool = False) -> int:
    """Foreground entry for `cfn ingest`."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        internals.check_versions()
        internals.check_server()
        settings = IngestSettings.from_env()
        secrets = load_secrets(settings, allow_unauthenticated)
    except (ConfigError, StartupError, internals.InternalsError) as exc:
        print(f"cfn ingest: {exc}", file=sys.stderr)
        return 2
    if secrets is None:
        print(
            "cfn ingest: WARNING: running WITHOUT authentication (--allow-unauthenticated); "
            "anyone who can reach this port can write to Kafka",
            file=sys.stderr,
        )
        os.environ[UNAUTHENTICATED_ENV] = "1"
    else:
        os.environ.pop(UNAUTHENTICATED_ENV, None)
    uvicorn.run(
        "cfn.ingest.server:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="uvloop",
        # cfn's own HTTP/1.1 protocol (ingest/http.py): the app called directly, no ASGI per
        # request; head size, head and body time limits.
        http=IngestProtocol,
        proxy_headers=False,  # nothing reads the client address: no middleware in front
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=15,
        # No connection cap: it counted idle and unfinished connections, so a few thousand
        # silent sockets locked every client out. In-flight requests are capped by the app
        # (429), heads by size and time (ingest/http.py), bodies by CFN_INGEST_BODY_TIMEOUT.
        limit_concurrency=None,
        # HTTPS when CFN_INGEST_TLS_CERTFILE/_KEYFILE are set: TLS is the transport's, so the
        # protocol's head and body guards apply to the decrypted stream unchanged.
        ssl_certfile=None if settings.tls_certfile is None else str(settings.tls_certfile),
        ssl_keyfile=None if settings.tls_keyfile is None else str(settings.tls_keyfile),
    )
    return 0
