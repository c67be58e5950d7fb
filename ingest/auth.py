"""Webhook secrets: which tenant a `cf-webhook-auth` value belongs to, reloadable on SIGHUP."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cfn.schemas import jsonio

DEFAULT_TENANT = "default"


class SecretsError(ValueError):
    """The secrets configuration is unusable; the message never contains a secret."""


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


@dataclass(frozen=True, slots=True)
class SecretIndex:
    """Maps sha256(secret) to its tenant, so a lookup never compares secrets byte by byte.

    Hash-indexing keeps the lookup time independent of how much of a guess matches a real
    secret (what a naive `==` leaks), and lets any number of tenants and rotated secrets share
    one O(1) lookup. The plain secrets are not kept.
    """

    by_digest: Mapping[bytes, str]

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self.by_digest.values())

    def tenant_for(self, presented: bytes) -> str | None:
        """The tenant whose secret equals `presented`, or None."""
        return self.by_digest.get(_digest(presented))

    @classmethod
    def from_mapping(cls, tenants: Mapping[str, object]) -> SecretIndex:
        """Build from {tenant: [secret, ...]} (a single string is accepted as a one-item list).

        Raises:
            SecretsError: a tenant has no secrets, a secret is empty, or two tenants share one.
        """
        by_digest: dict[bytes, str] = {}
        for tenant, secrets in tenants.items():
            items = [secrets] if isinstance(secrets, str) else secrets
            if not isinstance(items, list) or not items:
                raise SecretsError(f"tenant {tenant!r}: expected a non-empty list of secrets")
            for position, secret in enumerate(items):
                if not isinstance(secret, str) or not secret:
                    raise SecretsError(f"tenant {tenant!r}: secret #{position + 1} is empty")
                digest = _digest(secret.encode())
                other = by_digest.get(digest)
                if other is not None and other != tenant:
                    raise SecretsError(
                        f"tenants {other!r} and {tenant!r} share a secret; each needs its own"
                    )
                by_digest[digest] = tenant
        return cls(by_digest)

    @classmethod
    def load(cls, secret: str | None, secrets_file: Path | None) -> SecretIndex:
        """Build from CFN_INGEST_SECRET and/or CFN_INGEST_SECRETS_FILE (both may be given).

        Raises:
            SecretsError: the file is unreadable or malformed.
        """
        tenants: dict[str, object] = {}
        if secrets_file is not None:
            try:
                parsed = jsonio.loads(secrets_file.read_bytes())
            except OSError as exc:
                raise SecretsError(
                    f"CFN_INGEST_SECRETS_FILE {secrets_file}: {exc.strerror}"
                ) from None
            except jsonio.JSONDecodeError:
                raise SecretsError(
                    f"CFN_INGEST_SECRETS_FILE {secrets_file}: not valid JSON"
                ) from None
            if not isinstance(parsed, dict):
                raise SecretsError(
                    f"CFN_INGEST_SECRETS_FILE {secrets_file}: expected an object of "
                    '{"tenant": ["secret", ...]}'
                )
            tenants.update(parsed)
        if secret:
            existing = tenants.get(DEFAULT_TENANT)
            if isinstance(existing, str):
                existing = [existing]
            tenants[DEFAULT_TENANT] = (
                [secret, *existing] if isinstance(existing, list) else [secret]
            )
        return cls.from_mapping(tenants)
