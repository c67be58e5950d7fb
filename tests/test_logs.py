"""cfn/logs.py: CFN_LOG_LEVEL and CFN_LOG_FORMAT, the JSON lines' fields, and what each level
lets through."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from cfn.config import ConfigError
from cfn.logs import JsonFormatter, LogSettings, configure

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where `configure` sends lines in a test; the loggers' levels and handlers come back after."""
    root, cfn = logging.getLogger(), logging.getLogger("cfn")
    levels = (root.level, cfn.level)
    handlers = list(root.handlers)
    yield io.StringIO()
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(levels[0])
    cfn.setLevel(levels[1])


def _lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_defaults_are_info_and_text() -> None:
    assert LogSettings.from_env({}) == LogSettings(logging.INFO, "text")


def test_names_in_any_case() -> None:
    settings = LogSettings.from_env({"CFN_LOG_LEVEL": " debug", "CFN_LOG_FORMAT": "JSON"})
    assert settings == LogSettings(logging.DEBUG, "json")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CFN_LOG_LEVEL", "verbose"), ("CFN_LOG_LEVEL", "10"), ("CFN_LOG_FORMAT", "logfmt")],
)
def test_a_wrong_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        LogSettings.from_env({variable: value})


def test_json_line_fields() -> None:
    record = logging.LogRecord(
        "cfn.worker", logging.INFO, __file__, 1, "partition %d migrated to %s", (3, "x"), None
    )
    record.created = 1_764_979_200.25  # 2025-12-06T00:00:00.250Z
    record.msecs = 250.0
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2025-12-06T00:00:00.250Z",
        "level": "INFO",
        "logger": "cfn.worker",
        "message": "partition 3 migrated to x",
    }


def test_json_one_line_per_record_with_its_traceback(stream: io.StringIO) -> None:
    configure(LogSettings(logging.INFO, "json"), stream)
    log = logging.getLogger("cfn.worker")
    log.warning("two\nlines and a lone surrogate")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = _lines(stream)
    assert set(first) == {"ts", "level", "logger", "message"}
    assert TS.fullmatch(first["ts"])
    assert first["level"] == "WARNING" and first["logger"] == "cfn.worker"
    assert first["message"] == "two\nlines and a lone surrogate"
    assert second["level"] == "ERROR" and second["message"] == "failed"
    assert "RuntimeError: boom" in second["exc"]


def test_a_lone_surrogate_does_not_break_a_json_line() -> None:
    # Formatted directly: a record logged with it would also reach pytest's own capture, which
    # pytest-xdist cannot send between its processes.
    record = logging.LogRecord("cfn.worker", logging.WARNING, __file__, 1, "bad \udcff", (), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "bad \\udcff"


def test_the_level_is_cfns_and_libraries_stay_at_warning(stream: io.StringIO) -> None:
    configure(LogSettings.from_env({"CFN_LOG_FORMAT": "json"}), stream)
    logging.getLogger("cfn.worker").info("worker id w-1 (kept in slot 0 of /tmp/cfn)")
    logging.getLogger("cfn.worker").debug("not at INFO")
    logging.getLogger("a.library").info("a connection: not shown")
    logging.getLogger("a.library").warning("shown")
    assert [(line["logger"], line["message"]) for line in _lines(stream)] == [
        ("cfn.worker", "worker id w-1 (kept in slot 0 of /tmp/cfn)"),
        ("a.library", "shown"),
    ]


def test_a_higher_level_quiets_libraries_too(stream: io.StringIO) -> None:
    configure(LogSettings(logging.ERROR, "text"), stream)
    logging.getLogger("cfn.worker").warning("no")
    logging.getLogger("a.library").warning("no")
    logging.getLogger("cfn.worker").error("yes")
    (line,) = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR cfn\.worker yes", line)


def test_configure_again_replaces_its_handler(stream: io.StringIO) -> None:
    other = io.StringIO()
    configure(LogSettings(logging.INFO, "text"), other)
    configure(LogSettings(logging.INFO, "json"), stream)
    logging.getLogger("cfn.worker").info("once")
    assert other.getvalue() == ""
    assert [line["message"] for line in _lines(stream)] == ["once"]
