"""The settings of `cfn cloudflare` and `cfn reconcile`: one frozen object from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cfn.cloudflare.client import DEFAULT_API_BASE
from cfn.config import ConfigError, Env, topic_names
from cfn.security import PLAINTEXT, KafkaSecurity


@dataclass(frozen=True)
class CloudflareSettings:
    """What the Cloudflare commands read from CFN_* variables (docs/cloudflare.md)."""

    api_base: str = DEFAULT_API_BASE
    secrets_file: Path | None = None  # the ingest's: the tenants, their accounts and secrets
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "cfn."
    security: KafkaSecurity = PLAINTEXT
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9465  # `cfn reconcile --every`'s /metrics

    @property
    def raw_topic(self) -> str:
        return topic_names(self.topic_prefix)["raw"]

    def require_secrets_file(self) -> Path:
        if self.secrets_file is None:
            raise ConfigError(
                "CFN_INGEST_SECRETS_FILE is not set (the ingest's secrets file, where each "
                'tenant\'s "cloudflare" account is named); or pass --secrets-file'
            )
        return self.secrets_file

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CloudflareSettings:
        environ = os.environ if environ is None else environ
        env = Env(environ)
        secrets_file = env.raw("CFN_INGEST_SECRETS_FILE")
        base = env.text("CFN_CLOUDFLARE_API_BASE", cls.api_base)
        if not base.startswith(("https://", "http://")):
            raise ConfigError(f"CFN_CLOUDFLARE_API_BASE must be an http(s) URL, got {base!r}")
        return cls(
            api_base=base.rstrip("/"),
            secrets_file=Path(secrets_file) if secrets_file else None,
            bootstrap=env.text("CFN_KAFKA_BOOTSTRAP", cls.bootstrap),
            topic_prefix=env.text("CFN_TOPIC_PREFIX", cls.topic_prefix),
            security=KafkaSecurity.from_env(environ),
            metrics_host=env.text("CFN_RECONCILE_METRICS_HOST", cls.metrics_host),
            metrics_port=env.integer("CFN_RECONCILE_METRICS_PORT", cls.metrics_port),
        )
