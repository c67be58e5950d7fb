"""Logging of a cfn process: CFN_LOG_LEVEL, and CFN_LOG_FORMAT text or one JSON object a line."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from cfn.config import ConfigError
from cfn.schemas import jsonio

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
# INFO is one line per change of state (Kafka reachable, topics created, the worker id, a
# rebalance's restore, a partition migrated), never one per record; runbooks wait for them.
DEFAULT_LEVEL = "INFO"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Other libraries (aiokafka, aiohttp, ...) log from WARNING (or CFN_LOG_LEVEL when higher): their
# INFO is a line per connection.
LIBRARY_LEVEL = logging.WARNING


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How a process logs: `level` applies to cfn's own loggers (`cfn.*`), `format` to every
    line the process logs."""

    level: int = logging.INFO
    format: str = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogSettings:
        """Read CFN_LOG_LEVEL (a level name, any case) and CFN_LOG_FORMAT (`text` or `json`)
        from `environ` (default: the process environment).

        Raises:
            ConfigError: a value is not one of those; the message names the variable.
        """
        environ = os.environ if environ is None else environ
        level = environ.get("CFN_LOG_LEVEL", DEFAULT_LEVEL)
        if level.strip().upper() not in LEVELS:
            raise ConfigError(f"CFN_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {level!r}")
        form = environ.get("CFN_LOG_FORMAT", "text")
        if form.strip().lower() not in FORMATS:
            raise ConfigError(f"CFN_LOG_FORMAT must be text or json, not {form!r}")
        return cls(
            level=logging.getLevelNamesMapping()[level.strip().upper()],
            format=form.strip().lower(),
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with fields that stay: `ts` (UTC, RFC 3339 with milliseconds),
    `level`, `logger`, `message`, and `exc` (the traceback) when the line carries one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return jsonio.dumps(line).decode()
        except TypeError:
            # orjson refuses lone surrogates (bytes decoded with surrogateescape): a log line
            # must not fail for that.
            safe = {k: v.encode("utf-8", "backslashreplace").decode() for k, v in line.items()}
            return jsonio.dumps(safe).decode()


class _Handler(logging.StreamHandler[IO[str]]):
    """The handler `configure` installs, told apart from any other on the root logger."""


def configure(settings: LogSettings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line of the process to `stream` (stderr) in `settings.format`, cfn's
    loggers from `settings.level` and other libraries' from WARNING (or that level, when
    higher). Calling it again replaces
    what it installed before, and leaves other handlers (a test's capture) alone.

    Args:
        settings: the level and the format.
        stream: where lines go; stderr by default.

    Returns:
        The handler it installed on the root logger.
    """
    handler = _Handler(sys.stderr if stream is None else stream)
    formatter = JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(LIBRARY_LEVEL, settings.level))
    logging.getLogger("cfn").setLevel(settings.level)
    return handler
