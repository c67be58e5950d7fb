"""Reading CFN_* settings from a mapping, with errors that name the variable; the topic roles."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    """A CFN_* variable is missing or malformed; the message names it."""


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "10m", "24h", "1.5d" or "250ms".

    Raises:
        ValueError: the text is not a non-negative duration.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Env:
    """Typed reads from an environment mapping; every error names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value not in (None, "") else None

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {number}")
        return number

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if not number >= minimum:  # also refuses NaN, which compares false with everything
            raise ConfigError(f"{name} must be >= {minimum}, got {number}")
        return number

    def duration(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def durations(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        value = self.raw(name)
        if value is None:
            return default
        try:
            items = tuple(parse_duration(part) for part in value.split(",") if part.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        if not items or any(item <= 0 for item in items):
            raise ConfigError(f"{name} must list positive durations, got {value!r}")
        return items

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")


# Producer compression codecs (Kafka's names); "none" sends batches uncompressed.
COMPRESSIONS = ("lz4", "zstd", "snappy", "gzip", "none")

# CFN_TRANSACTIONS, who writes the worker's transactions (processors/transactions.py), the default
# first: one producer per worker (KIP-447), or one per partition.
TRANSACTIONS = ("worker", "partition")


# The worker's changelog-backed tables (processors/changelog.py). They share one changelog topic,
# each record keyed `<table>:<key>`.
TABLES = ("dedup", "incidents", "rates", "state-retention", "anomalies", "flaps")


def changelog_topic(app_id: str) -> str:
    """The changelog topic of the worker's tables (CFN_APP_ID is its prefix)."""
    return f"{app_id}-changelog"


def legacy_changelog_topic(app_id: str, table: str) -> str:
    """A table's own changelog topic, as workers before the shared one wrote them: read once,
    to migrate their state (processors/migration.py)."""
    return f"{app_id}-{table}-changelog"


# Every topic cfn uses, by role: the one list (a new output topic starts here). Its name is
# CFN_TOPIC_PREFIX + role.
TOPIC_ROLES = (
    "raw",
    "events",
    "incidents",
    "incident-state",
    "rates",
    "anomalies",
    "flaps",
    "dlq",
    "rate-input",
)
# The topics the worker writes for subscribers (`cfn tail`, `cfn replay`, the ACLs): all but the
# ingest's raw input and the worker's internal repartition topic.
OUTPUT_ROLES = tuple(role for role in TOPIC_ROLES if role not in ("raw", "rate-input"))


def topic_names(prefix: str) -> dict[str, str]:
    """Every topic cfn uses, by role, under one prefix (CFN_TOPIC_PREFIX)."""
    return {role: f"{prefix}{role}" for role in TOPIC_ROLES}


@dataclass(frozen=True)
class CommandSettings:
    """What the `cfn` commands that start no service read (`acls`, `send`, `tail`, `run`, the
    local broker); the ingest, the worker and `cfn cloudflare` have settings of their own."""

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "cfn."
    app_id: str = "cfn"
    transactions: str = TRANSACTIONS[0]
    ingest_secret: str | None = field(default=None, repr=False)  # never in a repr or a log
    kafka_cache: Path = Path("~/.cache/cfn/kafka")  # the local broker's jars, every version

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CommandSettings:
        env = Env(os.environ if environ is None else environ)
        cache = env.raw("CFN_KAFKA_CACHE")
        if cache is None:
            xdg = env.raw("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            cache = os.path.join(xdg, "cfn", "kafka")
        return cls(
            bootstrap=env.text("CFN_KAFKA_BOOTSTRAP", cls.bootstrap),
            topic_prefix=env.text("CFN_TOPIC_PREFIX", cls.topic_prefix),
            app_id=env.text("CFN_APP_ID", cls.app_id),
            transactions=env.text("CFN_TRANSACTIONS", cls.transactions),
            ingest_secret=env.raw("CFN_INGEST_SECRET"),
            kafka_cache=Path(cache),
        )
