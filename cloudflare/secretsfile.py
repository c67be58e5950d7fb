"""Changing a tenant's webhook secrets in the ingest's secrets file, safely for a running ingest.

Each change is checked the way the ingest will check it (ingest.auth) before it is written, and
written whole: a new file beside the old, flushed, then renamed over it. A reader (the ingest's
file watch) sees the old version or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets as random_secrets
import tempfile
from pathlib import Path
from typing import Any

from cfn.ingest.auth import MIN_SECRET_BYTES, CloudflareAccount, SecretIndex, SecretsError
from cfn.schemas import jsonio


def new_secret() -> str:
    """A fresh webhook secret: 32 random bytes as 64 hex digits."""
    return random_secrets.token_hex(32)


class SecretsFile:
    """The ingest's secrets file (CFN_INGEST_SECRETS_FILE), read and rewritten whole.

    Args:
        path: the file. In Kubernetes a mounted Secret is read-only: run connect and rotate
            where the file is writable and let the Secret follow it (docs/cloudflare.md).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The file as JSON, checked as the ingest checks it.

        Raises:
            SecretsError: unreadable or malformed (the message names the file, never a secret).
        """
        try:
            parsed = jsonio.loads(self.path.read_bytes())
        except OSError as exc:
            raise SecretsError(f"{self.path}: {exc.strerror}") from None
        except jsonio.JSONDecodeError:
            raise SecretsError(f"{self.path}: not valid JSON") from None
        if not isinstance(parsed, dict):
            raise SecretsError(f"{self.path}: expected an object of tenants")
        self._check(parsed)
        return parsed

    def index(self) -> SecretIndex:
        return self._check(self.read())

    def account(self, tenant: str) -> CloudflareAccount:
        """The tenant's Cloudflare account.

        Raises:
            SecretsError: no such tenant, or its entry names no "cloudflare" account.
        """
        index = self.index()
        if tenant not in index.tenants:
            raise SecretsError(f"{self.path}: no tenant {tenant!r}")
        account = index.cloudflare.get(tenant)
        if account is None:
            raise SecretsError(
                f'{self.path}: tenant {tenant!r} has no "cloudflare": '
                '{"account_id": ..., "api_token_file": ...}'
            )
        return account

    def secrets(self, tenant: str) -> list[str]:
        """The tenant's secrets, in the file's order."""
        value = self.read().get(tenant)
        if isinstance(value, dict):
            value = value.get("secrets")
        if isinstance(value, str):
            return [value]
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []

    def set_secrets(self, tenant: str, secrets: list[str]) -> None:
        """Make `secrets` the tenant's secrets, keeping the rest of its entry (limits, account).

        Raises:
            SecretsError: the result would not load in the ingest (it is then not written).
        """
        tenants = self.read()
        value = tenants.get(tenant)
        if isinstance(value, dict):
            tenants[tenant] = {**value, "secrets": secrets}
        else:
            tenants[tenant] = secrets
        self._check(tenants)
        self._write(tenants)

    def _check(self, tenants: dict[str, Any]) -> SecretIndex:
        try:
            return SecretIndex.from_mapping(tenants, MIN_SECRET_BYTES)
        except SecretsError as exc:
            raise SecretsError(f"{self.path}: {exc}") from None

    def _write(self, tenants: dict[str, Any]) -> None:
        folder = self.path.parent
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o600
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(jsonio.dumps(tenants))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(name, mode)
            os.replace(name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
