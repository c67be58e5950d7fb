"""cfn.config: durations and typed CFN_* reads whose errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.config import CommandSettings, ConfigError, Env, parse_duration, topic_names
from cfn.ingest.settings import IngestSettings

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("24h", 86_400.0),
        ("1.5d", 1.5 * 86_400),
        ("250ms", 0.25),
        ("0", 0.0),
        (" 5 m ", 300.0),
        ("0.5h", 1800.0),
    ],
)
def test_parse_duration_reads_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "-5", "-5s", "10x", "5 minutes", "1e3", "m", ".5s", "1.s", "5s5"]
)
def test_parse_duration_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([*UNITS, ""]))
def test_parse_duration_scales_by_the_unit(amount: int, unit: str) -> None:
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * UNITS.get(unit, 1.0))


def test_raw_treats_empty_as_missing() -> None:
    env = Env({"CFN_A": "x", "CFN_EMPTY": ""})
    assert env.raw("CFN_A") == "x"
    assert env.raw("CFN_EMPTY") is None
    assert env.raw("CFN_MISSING") is None
    assert env.text("CFN_EMPTY", "fallback") == "fallback"
    assert env.text("CFN_MISSING", "fallback") == "fallback"
    assert env.text("CFN_A", "fallback") == "x"


def test_integer_reads_defaults_and_bounds() -> None:
    env = Env({"CFN_PORT": "8081", "CFN_ZERO": "0", "CFN_BAD": "80a", "CFN_NEG": "-1"})
    assert env.integer("CFN_PORT", 1) == 8081
    assert env.integer("CFN_MISSING", 7) == 7
    assert env.integer("CFN_ZERO", 7) == 0
    with pytest.raises(ConfigError, match=r"CFN_ZERO must be >= 1, got 0"):
        env.integer("CFN_ZERO", 7, minimum=1)
    with pytest.raises(ConfigError, match=r"CFN_NEG must be >= 0"):
        env.integer("CFN_NEG", 7)
    with pytest.raises(ConfigError, match=r"CFN_BAD must be an integer, got '80a'"):
        env.integer("CFN_BAD", 7)


def test_number_reads_defaults_and_bounds() -> None:
    env = Env({"CFN_RATIO": "0.25", "CFN_BAD": "quarter", "CFN_NEG": "-0.5"})
    assert env.number("CFN_RATIO", 1.0) == 0.25
    assert env.number("CFN_MISSING", 1.5) == 1.5
    with pytest.raises(ConfigError, match=r"CFN_RATIO must be >= 0.5"):
        env.number("CFN_RATIO", 1.0, minimum=0.5)
    with pytest.raises(ConfigError, match="CFN_NEG"):
        env.number("CFN_NEG", 1.0)
    with pytest.raises(ConfigError, match=r"CFN_BAD must be a number, got 'quarter'"):
        env.number("CFN_BAD", 1.0)


def test_number_rejects_nan_which_is_not_above_any_minimum() -> None:
    """float() reads "nan", and NaN < minimum is False: the bound must still hold."""
    with pytest.raises(ConfigError, match="CFN_RATIO"):
        Env({"CFN_RATIO": "nan"}).number("CFN_RATIO", 1.0)


def test_duration_reads_and_names_the_variable_on_error() -> None:
    env = Env({"CFN_T": "10m", "CFN_BAD": "ten minutes"})
    assert env.duration("CFN_T", 1.0) == 600.0
    assert env.duration("CFN_MISSING", 3.0) == 3.0
    with pytest.raises(ConfigError, match=r"^CFN_BAD: not a duration: 'ten minutes'"):
        env.duration("CFN_BAD", 1.0)


def test_durations_reads_a_list() -> None:
    env = Env({"CFN_W": "60,300", "CFN_UNITS": " 1m, 5m ,1h", "CFN_GAPS": "60,,300,"})
    assert env.durations("CFN_W", (1.0,)) == (60.0, 300.0)
    assert env.durations("CFN_UNITS", (1.0,)) == (60.0, 300.0, 3600.0)
    assert env.durations("CFN_GAPS", (1.0,)) == (60.0, 300.0)
    assert env.durations("CFN_MISSING", (5.0, 10.0)) == (5.0, 10.0)


@pytest.mark.parametrize("value", ["0", "60,0", ",", " , ", "0ms"])
def test_durations_must_be_positive_and_present(value: str) -> None:
    with pytest.raises(ConfigError, match="CFN_W must list positive durations"):
        Env({"CFN_W": value}).durations("CFN_W", (60.0,))


def test_durations_names_the_variable_for_a_bad_item() -> None:
    with pytest.raises(ConfigError, match=r"^CFN_W: not a duration: 'soon'"):
        Env({"CFN_W": "60,soon"}).durations("CFN_W", (60.0,))


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "on"])
def test_flag_true_spellings(value: str) -> None:
    assert Env({"CFN_F": value}).flag("CFN_F", False) is True


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "OFF"])
def test_flag_false_spellings(value: str) -> None:
    assert Env({"CFN_F": value}).flag("CFN_F", True) is False


def test_flag_default_and_error() -> None:
    assert Env({}).flag("CFN_F", True) is True
    assert Env({"CFN_F": ""}).flag("CFN_F", False) is False
    with pytest.raises(ConfigError, match=r"CFN_F must be true or false, got 'maybe'"):
        Env({"CFN_F": "maybe"}).flag("CFN_F", False)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_env_never_writes_to_the_mapping() -> None:
    environ = {"CFN_A": "1"}
    env = Env(environ)
    env.integer("CFN_A", 0)
    env.text("CFN_B", "x")
    assert environ == {"CFN_A": "1"}


def test_topic_names_share_one_prefix() -> None:
    names = topic_names("t1.")
    assert set(names) == {
        "raw",
        "events",
        "incidents",
        "incident-state",
        "rates",
        "anomalies",
        "flaps",
        "dlq",
        "rate-input",
    }
    assert all(name == f"t1.{role}" for role, name in names.items())
    assert len(set(names.values())) == len(names)


def test_the_commands_read_their_settings_once_with_the_processes_defaults() -> None:
    """`cfn acls`, `send`, `tail`, `run` and the local broker read one CommandSettings; an
    empty variable is unset, as for the ingest and the worker."""
    assert CommandSettings.from_env({"CFN_TOPIC_PREFIX": ""}) == CommandSettings(
        kafka_cache=CommandSettings.from_env({}).kafka_cache
    )
    given = CommandSettings.from_env(
        {
            "CFN_KAFKA_BOOTSTRAP": "k:1",
            "CFN_TOPIC_PREFIX": "t.",
            "CFN_APP_ID": "a",
            "CFN_TRANSACTIONS": "partition",
            "CFN_INGEST_SECRET": "s3cret-never-shown",
            "XDG_CACHE_HOME": "/xdg",
        }
    )
    assert (given.bootstrap, given.topic_prefix, given.app_id, given.transactions) == (
        "k:1",
        "t.",
        "a",
        "partition",
    )
    assert given.kafka_cache == Path("/xdg/cfn/kafka")
    assert "s3cret" not in repr(given)
    cache = CommandSettings.from_env({"CFN_KAFKA_CACHE": "/c", "XDG_CACHE_HOME": "/xdg"})
    assert cache.kafka_cache == Path("/c")


def test_the_ingest_reads_what_cfn_ingest_sets_for_its_processes() -> None:
    assert (IngestSettings.from_env({}).workers, IngestSettings().allow_unauthenticated) == (
        1,
        False,
    )
    told = IngestSettings.from_env(
        {"CFN_INGEST_WORKERS": "4", "CFN_INGEST_ALLOW_UNAUTHENTICATED": "1"}
    )
    assert (told.workers, told.allow_unauthenticated) == (4, True)
    with pytest.raises(ConfigError, match="CFN_INGEST_WORKERS"):
        IngestSettings.from_env({"CFN_INGEST_WORKERS": "0"})
