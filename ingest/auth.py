"""Webhook secrets: which tenant a `cf-webhook-auth` value belongs to, reloadable on SIGHUP.

The secrets file also carries each tenant's limits (ingest.fairness) and its Cloudflare account
(cfn.cloudflare): a tenant's value is its secret, a list of secrets, or an object
{"secrets": [...], "max_inflight": N, "rate": R, "burst": B, "cloudflare": {"account_id": "...",
"api_token_file": "..."}} whose other fields are all optional.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cfn.ingest.fairness import TenantLimits
from cfn.schemas import jsonio

DEFAULT_TENANT = "default"
# A webhook secret's least length, in bytes: a shorter one can be guessed.
MIN_SECRET_BYTES = 16
# The shipped manifests' example secrets begin so; a process given one refuses to start.
PLACEHOLDER = "PLACEHOLDER"


class SecretsError(ValueError):
    """The secrets configuration is unusable; the message never contains a secret."""


@dataclass(frozen=True, slots=True)
class CloudflareAccount:
    """A tenant's Cloudflare account, as its entry in the secrets file names it.

    The API token stays in its own file and is read each time it is used (`token`), so a
    rotated token needs no reload and no object of cfn ever holds it: not a repr, not a log
    line, not an exception message.

    Attributes:
        account_id: the Cloudflare account id (32 hex digits in practice; not checked).
        api_token_file: the file holding the API token (surrounding whitespace is ignored).
    """

    account_id: str
    api_token_file: Path

    def token(self) -> str:
        """The API token, read from `api_token_file` now.

        Raises:
            SecretsError: the file is unreadable or empty (the message names the file only).
        """
        try:
            token = self.api_token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SecretsError(
                f"the Cloudflare API token file {self.api_token_file}: {reason}"
            ) from None
        if not token:
            raise SecretsError(f"the Cloudflare API token file {self.api_token_file} is empty")
        return token


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


@dataclass(frozen=True, slots=True)
class SecretIndex:
    """Maps sha256(secret) to its tenant, so a lookup never compares secrets byte by byte.

    Hash-indexing keeps the lookup time independent of how much of a guess matches a real
    secret (what a naive `==` leaks), and lets any number of tenants and rotated secrets share
    one O(1) lookup. The plain secrets are not kept.

    Attributes:
        by_digest: sha256(secret) -> tenant.
        limits: every tenant's limits as configured (unset fields: the defaults).
        cloudflare: the tenants whose entry names a Cloudflare account, and that account.
    """

    by_digest: Mapping[bytes, str]
    limits: Mapping[str, TenantLimits] = field(default_factory=dict)
    cloudflare: Mapping[str, CloudflareAccount] = field(default_factory=dict)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self.by_digest.values())

    def tenant_for(self, presented: bytes) -> str | None:
        """The tenant whose secret equals `presented`, or None."""
        return self.by_digest.get(_digest(presented))

    @classmethod
    def from_mapping(cls, tenants: Mapping[str, object], min_bytes: int = 1) -> SecretIndex:
        """Build from {tenant: [secret, ...]}; a single string is a one-item list, and an object
        {"secrets": ..., "max_inflight": N, "rate": R, "burst": B, "cloudflare": {...}} adds the
        tenant's limits and its Cloudflare account.

        Raises:
            SecretsError: a tenant has no secrets, a secret is empty, two tenants share one, or
                a limit is malformed (the message names the tenant and the field).
        """
        by_digest: dict[bytes, str] = {}
        limits: dict[str, TenantLimits] = {}
        accounts: dict[str, CloudflareAccount] = {}
        short: str | None = None  # the first secret too short (told after malformed limits)
        for tenant, value in tenants.items():
            secrets, limits[tenant], account = _split(tenant, value)
            if account is not None:
                accounts[tenant] = account
            items = [secrets] if isinstance(secrets, str) else secrets
            if not isinstance(items, list) or not items:
                raise SecretsError(f"tenant {tenant!r}: expected a non-empty list of secrets")
            for position, secret in enumerate(items):
                if not isinstance(secret, str) or not secret:
                    raise SecretsError(f"tenant {tenant!r}: secret #{position + 1} is empty")
                if short is None and min_bytes > 1 and secret.upper().startswith(PLACEHOLDER):
                    short = (
                        f"tenant {tenant!r}: secret #{position + 1} is a placeholder from the "
                        "shipped manifests; create the real secret (docs/security.md)"
                    )
                elif short is None and len(secret.encode()) < min_bytes:
                    short = (
                        f"tenant {tenant!r}: secret #{position + 1} is shorter than {min_bytes} "
                        "bytes (use a random one, e.g. `openssl rand -hex 32`)"
                    )
                digest = _digest(secret.encode())
                other = by_digest.get(digest)
                if other is not None and other != tenant:
                    raise SecretsError(
                        f"tenants {other!r} and {tenant!r} share a secret; each needs its own"
                    )
                by_digest[digest] = tenant
        if short is not None:
            raise SecretsError(short)
        return cls(by_digest, limits, accounts)

    @classmethod
    def load(cls, secret: str | None, secrets_file: Path | None) -> SecretIndex:
        """Build from CFN_INGEST_SECRET and/or CFN_INGEST_SECRETS_FILE (both may be given).

        Raises:
            SecretsError: the file is unreadable or malformed, or a secret is shorter than
                MIN_SECRET_BYTES.
        """
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise SecretsError(
                f"CFN_INGEST_SECRET is shorter than {MIN_SECRET_BYTES} bytes "
                "(use a random one, e.g. `openssl rand -hex 32`)"
            )
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
                    '{"tenant": ["secret", ...]} (or {"tenant": {"secrets": [...], ...}})'
                )
            tenants.update(parsed)
        if secret:
            tenants[DEFAULT_TENANT] = _with_secret(tenants.get(DEFAULT_TENANT), secret)
        try:
            return cls.from_mapping(tenants, MIN_SECRET_BYTES)
        except SecretsError as exc:
            if secrets_file is None:
                raise
            raise SecretsError(f"CFN_INGEST_SECRETS_FILE {secrets_file}: {exc}") from None


_LIMIT_FIELDS = ("max_inflight", "rate", "burst")
_FIELDS = ("secrets", *_LIMIT_FIELDS, "cloudflare")
_CLOUDFLARE_FIELDS = ("account_id", "api_token_file")


def _split(tenant: str, value: object) -> tuple[object, TenantLimits, CloudflareAccount | None]:
    """(the secrets as given, the limits, the Cloudflare account) of one tenant's value."""
    if not isinstance(value, dict):
        return value, TenantLimits(), None
    for key in value:
        if key not in _FIELDS:
            raise SecretsError(f"tenant {tenant!r}: {_unknown(str(key), _FIELDS)}")
    if "secrets" not in value:
        raise SecretsError(f'tenant {tenant!r}: the object has no "secrets"')
    max_inflight = _whole(tenant, "max_inflight", value.get("max_inflight"))
    burst = _whole(tenant, "burst", value.get("burst"))
    rate = value.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1e9
    ):
        raise SecretsError(
            f"tenant {tenant!r}: 'rate' must be a number >= 0 (requests per second; 0: no "
            f"limit), got {_kind(rate)}"
        )
    if burst is not None and not rate:
        raise SecretsError(f"tenant {tenant!r}: 'burst' needs a 'rate' above 0 beside it")
    limits = TenantLimits(max_inflight, None if rate is None else float(rate), burst)
    return value["secrets"], limits, _account(tenant, value.get("cloudflare"))


def _account(tenant: str, value: object) -> CloudflareAccount | None:
    """The tenant's "cloudflare" object, checked: both fields non-empty strings, no others."""
    if value is None:
        return None
    where = f"tenant {tenant!r}: 'cloudflare'"
    if not isinstance(value, dict):
        raise SecretsError(
            f'{where} must be an object {{"account_id": ..., "api_token_file": ...}}, '
            f"got {_kind(value)}"
        )
    for key in value:
        if key not in _CLOUDFLARE_FIELDS:
            # The token itself pasted here is the likely mistake: its name is never shown.
            raise SecretsError(f"{where}: {_unknown(str(key), _CLOUDFLARE_FIELDS)}")
    fields: dict[str, str] = {}
    for key in _CLOUDFLARE_FIELDS:
        item = value.get(key)
        if not isinstance(item, str) or not item.strip():
            raise SecretsError(f"{where}: {key!r} must be a non-empty string, got {_kind(item)}")
        fields[key] = item.strip()
    return CloudflareAccount(fields["account_id"], Path(fields["api_token_file"]))


def _whole(tenant: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SecretsError(
            f"tenant {tenant!r}: {name!r} must be a whole number >= 1, got {_kind(value)}"
        )
    return value


def _unknown(key: str, known: tuple[str, ...]) -> str:
    """An unknown field, named only when it is a near miss of a real one: any other key might
    be a secret pasted in the wrong place."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    fields = ", ".join(repr(name) for name in known)
    if close:
        return f"unknown field {key!r} (did you mean {close[0]!r}?); the fields are {fields}"
    return f"an unknown field (its name is not shown); the fields are {fields}"


def _kind(value: object) -> str:
    """A bad value as an error may show it: numbers as they are (a secret is a string), and
    anything else only by its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object" if value is not None else "null"


def _with_secret(existing: object, secret: str) -> object:
    """The default tenant's value in the file with CFN_INGEST_SECRET added to its secrets."""
    if isinstance(existing, dict):
        return {**existing, "secrets": _with_secret(existing.get("secrets"), secret)}
    if isinstance(existing, str):
        existing = [existing]
    return [secret, *existing] if isinstance(existing, list) else [secret]
