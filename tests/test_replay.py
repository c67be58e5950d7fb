"""`cfn replay`: arguments, plan, progress lines, end-of-replay time; safe writes (broker)."""

from __future__ import annotations

import io
import itertools
import re
import subprocess
import sys
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from cfn.config import OUTPUT_ROLES, topic_names
from cfn.processors.driver import Raw
from cfn.processors.pipeline import Output
from cfn.processors.progress import Progress, duration, progress_line
from cfn.processors.replay import (
    Bound,
    Plan,
    ReplayError,
    choose_prefix,
    format_plan,
    live_horizon,
    process,
    run_replay,
)
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio
from cfn.shell.cli import build_parser
from cfn.topics import ensure_topics
from tests.kafka_util import (
    create_topics,
    partitions_of,
    produce_with_headers,
    read_to_end,
    run,
)
from tests.payloads import alert, encode
from tests.services import cfn_env

NOW = 1_790_000_000.0  # a whole hour minus 800 s; the rate windows below depend on it


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# ---- arguments -------------------------------------------------------------------------------


def test_the_default_prefix_is_the_shadow_one_and_others_are_chosen_explicitly() -> None:
    assert choose_prefix("cfn.", None, live=False) == "replay.cfn."
    assert choose_prefix("cfn.", "mine.", live=False) == "mine."
    assert choose_prefix("cfn.", None, live=True) == "cfn."


def test_live_with_an_output_prefix_is_an_error_that_names_both() -> None:
    with pytest.raises(ReplayError, match=r"--live.*--output-prefix"):
        choose_prefix("cfn.", "mine.", live=True)


def test_the_live_prefix_as_output_prefix_must_go_through_live() -> None:
    with pytest.raises(ReplayError, match="use --live"):
        choose_prefix("cfn.", "cfn.", live=False)


def test_the_parser_takes_live_and_yes() -> None:
    args = build_parser().parse_args(["replay", "--from", "0:0", "--live", "--yes"])
    assert (args.live, args.yes, args.output_prefix) == (True, True, None)
    args = build_parser().parse_args(["replay", "--from", "0:0"])
    assert (args.live, args.yes) == (False, False)


def run_offline(capsys: pytest.CaptureFixture[str], *args: Any, **kwargs: Any) -> tuple[int, str]:
    """run_replay against a port nothing listens on: it must stop before it needs Kafka."""
    environ = {"CFN_KAFKA_BOOTSTRAP": "127.0.0.1:1", "CFN_TOPIC_PREFIX": "cfn."}
    code = run_replay(*args, environ=environ, **kwargs)
    return code, capsys.readouterr().err


def test_run_refuses_bad_combinations_before_touching_kafka(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run_offline(capsys, "0:0", None, "x.", live=True, yes=True)
    assert code == 2 and "--output-prefix" in err
    code, err = run_offline(capsys, "0:0", None, None, live=True, interactive=False)
    assert code == 2 and "--yes" in err
    code, err = run_offline(capsys, "yesterday", None, None)
    assert code == 2 and "partition:offset" in err


def test_output_roles_come_from_topic_names_without_the_internal_ones() -> None:
    assert set(OUTPUT_ROLES) == set(topic_names("")) - {"raw", "rate-input"}
    assert "incident-state" in OUTPUT_ROLES and "events" in OUTPUT_ROLES


# ---- progress --------------------------------------------------------------------------------


def test_durations_are_short() -> None:
    assert [duration(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_a_progress_line_has_records_partitions_rate_and_eta() -> None:
    line = progress_line("read", 500, 2000, 10.0, 1, 4)
    assert line == "read: 500/2,000 records (25%), 1/4 partitions, 50/s, ETA 30s"
    assert progress_line("write", 0, 10, 0.0) == "write: 0/10 records (0%), 0/s, ETA unknown"
    done = progress_line("write", 10, 10, 2.0)
    assert done == "write: 10/10 records (100%), 5/s, done in 2s"


def test_on_a_terminal_one_line_is_redrawn_and_ended_once() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("read", 1000, out, tty=True, clock=clock, partitions=2)
    clock.now += 1
    progress.update(100, 0)
    clock.now += 0.05
    progress.update(150, 0)  # too soon after the last draw
    clock.now += 1
    progress.update(900, 1)
    clock.now += 1
    progress.finish(1000, 2)
    progress.finish(1000, 2)  # a second finish writes nothing
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    frames = text.split("\r")[1:]
    assert frames[0].startswith("read: 100/1,000 records (10%), 0/2 partitions, 100/s, ETA 9s")
    assert frames[2].startswith("read: 1,000/1,000 records (100%), 2/2 partitions")
    assert "done in 3s" in frames[2]
    # A shorter line pads over what the longer one before it left on the terminal.
    assert all(len(b) >= len(a.rstrip()) for a, b in itertools.pairwise(frames))


def test_in_a_log_plain_lines_come_each_tenth_or_every_ten_seconds() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("write", 1000, out, tty=False, clock=clock, every_s=10)
    for done in range(1, 1000):  # one record a millisecond: ten tenths in one second
        clock.now += 0.001
        progress.update(done)
    progress.finish(1000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split(" records")[0] for line in lines] == [
        f"write: {n:,}/1,000" for n in (*range(100, 1000, 100), 1000)
    ]
    out = io.StringIO()
    slow = Progress("write", 10**6, out, tty=False, clock=clock)
    for done in range(1, 31):  # one record a second: a line every ten seconds
        clock.now += 1
        slow.update(done)
    assert len(out.getvalue().splitlines()) == 3


# ---- the plan --------------------------------------------------------------------------------


def test_the_plan_names_ranges_records_time_and_topics() -> None:
    plan = Plan(
        raw_topic="cfn.raw",
        ranges={1: (10, 20), 0: (0, 5)},
        records=15,
        until=NOW,
        live=True,
        topics={"cfn.events": 12, "cfn.dlq": 0},
    )
    assert format_plan(plan).splitlines() == [
        "cfn replay plan: 15 records of cfn.raw into LIVE topics",
        "  read partition 0: offsets 0..4 (5 offsets)",
        "  read partition 1: offsets 10..19 (10 offsets)",
        "  timers: fire up to 2026-09-21T14:13:20Z, as the live worker did",
        "  write cfn.events: 12 records",
        "  write cfn.dlq: 0 records",
        "  leave incident-state: the live worker keeps it",
    ]
    shadow = format_plan(Plan("cfn.raw", {0: (0, 1)}, 1, None, False, {"replay.cfn.events": 1}))
    assert "into shadow topics" in shadow and "timers: all fire" in shadow


# ---- the end of a replay ---------------------------------------------------------------------


def raw(body: dict[str, Any], received_at: float, offset: int, partition: int = 0) -> Raw:
    ms = int(received_at * 1000)
    key = f"default|{body['account_id']}|{body['alert_correlation_id']}".encode()
    headers = [("cfn-tenant", b"default"), ("cfn-received-at", str(ms).encode())]
    return Raw(encode(body), key, partition, offset, ms, headers)


def states(outputs: list[Output]) -> list[tuple[str, str]]:
    found = []
    for out in outputs:
        if out.role == "incidents" and out.value is not None:
            incident = jsonio.loads(out.value)
            found.append((incident["correlation_id"], incident["state"]))
    return found


def test_the_live_horizon_is_the_start_or_the_end_of_the_range_if_earlier() -> None:
    records = [
        raw(alert(correlation="a"), NOW - 50, 0, partition=0),
        raw(alert(correlation="b"), NOW - 20, 0, partition=1),
    ]
    assert live_horizon(NOW, None, records) == NOW
    assert live_horizon(NOW, Bound(ms=int((NOW - 100) * 1000)), records) == NOW - 100
    assert live_horizon(NOW, Bound(ms=int((NOW + 100) * 1000)), records) == NOW
    assert live_horizon(NOW, Bound(partition=0, offset=1), records) == NOW - 50


def test_a_live_replay_does_not_expire_an_incident_that_is_still_open() -> None:
    settings = WorkerSettings(stale_after=3600.0, partitions=1)
    records = [
        raw(alert(correlation="open", ts=int(NOW) - 600), NOW - 600, 0),
        raw(alert(correlation="done", ts=int(NOW) - 500), NOW - 500, 1),
        raw(
            alert(correlation="done", event="ALERT_STATE_EVENT_END", ts=int(NOW) - 400),
            NOW - 400,
            2,
        ),
    ]
    live = states(process(settings, records, until=NOW))
    assert sorted(live) == [("done", "open"), ("done", "resolved"), ("open", "open")]
    shadow = states(process(settings, records))
    assert ("open", "expired") in shadow
    # An hour later the live worker has expired it too, and so does a replay then.
    assert ("open", "expired") in states(process(settings, records, until=NOW + 3600))


def test_a_live_replay_writes_no_tombstone_before_the_retention_has_passed() -> None:
    settings = WorkerSettings(partitions=1)  # incident-state retention: 7 days by default
    records = [
        raw(alert(correlation="done", ts=int(NOW) - 500), NOW - 500, 0),
        raw(
            alert(correlation="done", event="ALERT_STATE_EVENT_END", ts=int(NOW) - 400),
            NOW - 400,
            1,
        ),
    ]
    assert all(out.value is not None for out in process(settings, records, until=NOW))
    shadow = process(settings, records)  # its timers fire far in the future: retention passed
    assert [out.role for out in shadow if out.value is None] == ["incident-state"]


def test_a_live_replay_closes_only_the_rate_windows_the_live_watermark_has_passed() -> None:
    settings = WorkerSettings(partitions=1, rate_windows=(60, 3600))
    # NOW is 20 s into a minute: the minute before it is closed by now, the hour is not.
    records = [raw(alert(correlation="r", ts=int(NOW) - 30), NOW - 30, 0)]

    def windows(outputs: list[Output]) -> set[int]:
        return {
            jsonio.loads(out.value)["window_s"]
            for out in outputs
            if out.role == "rates" and out.value is not None
        }

    assert windows(process(settings, records, until=NOW)) == {60}
    assert windows(process(settings, records)) == {60, 3600}


# ---- against the broker ----------------------------------------------------------------------


def replay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`cfn replay` as a script runs it: no terminal on stdin, stdout or stderr."""
    return subprocess.run(
        [sys.executable, "-m", "cfn", "replay", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cfn_env(env),
        timeout=120,
        check=False,
    )


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Each topic's end offsets summed over its partitions."""
    tps = [tp for topic in topics for tp in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {topic: sum(n for tp, n in ends.items() if tp.topic == topic) for topic in topics}


@pytest.mark.broker
def test_replay_writes_shadow_topics_unless_live_is_asked_for_explicitly(
    kafka: str, unique: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = unique("rp").replace("-", "") + "."
    env = {"CFN_KAFKA_BOOTSTRAP": kafka, "CFN_TOPIC_PREFIX": prefix, "CFN_PARTITIONS": "2"}
    now = time.time()
    bodies = [
        (alert(correlation="open", ts=int(now) - 60), now - 60),
        (alert(correlation="done", ts=int(now) - 50), now - 50),
        (alert(correlation="done", event="ALERT_STATE_EVENT_END", ts=int(now) - 40), now - 40),
    ]
    records = [raw(b, t, i) for i, (b, t) in enumerate(bodies)]
    items = [(r.key or b"", r.value or b"", list(r.headers)) for r in records]
    live_names = topic_names(prefix)
    run(create_topics(kafka, [live_names["raw"]], 2))
    run(produce_with_headers(kafka, live_names["raw"], items))
    live = [live_names[role] for role in OUTPUT_ROLES]
    run(ensure_topics(kafka, [(role, live_names[role]) for role in OUTPUT_ROLES], 2, 1))
    before = run(end_offsets(kafka, live))
    assert before == dict.fromkeys(live, 0)
    start = ("--from", "2000-01-01T00:00:00Z")

    both = replay(*start, "--live", "--output-prefix", "x.", env=env)
    assert both.returncode == 2 and "--output-prefix" in both.stderr, both.stderr
    unconfirmed = replay(*start, "--live", env=env)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr, unconfirmed.stderr
    questions: list[str] = []

    def decline(question: str) -> bool:
        questions.append(question)
        return False

    declined = run_replay(
        start[1], None, None, live=True, environ=env, interactive=True, ask=decline
    )
    assert declined == 1 and len(questions) == 1, questions
    assert re.fullmatch(r"Write \d+ records into the LIVE topics\? \[y/N\] ", questions[0])
    assert "into LIVE topics" in capsys.readouterr().out  # the plan came before the question
    assert run(end_offsets(kafka, live)) == before

    shadow = replay(*start, env=env)
    assert shadow.returncode == 0, shadow.stderr
    assert "into shadow topics" in shadow.stdout and f"write replay.{prefix}events" in shadow.stdout
    assert "\r" not in shadow.stderr and "read: 3/3 records" in shadow.stderr
    assert run(end_offsets(kafka, live)) == before  # nothing reached the live topics
    shadow_incidents = [
        jsonio.loads(r.value)["state"] for r in run(read_to_end(kafka, f"replay.{prefix}incidents"))
    ]
    assert sorted(shadow_incidents) == ["expired", "open", "open", "resolved"]

    written = replay(*start, "--live", "--yes", env=env)
    assert written.returncode == 0, written.stderr
    out = written.stdout
    assert "into LIVE topics" in out and "timers: fire up to" in out
    assert "read partition" in out and f"write {prefix}incidents: 3 records" in out
    assert out.index("cfn replay plan") < out.index("raw records ->")
    after = run(end_offsets(kafka, live))
    assert after[live_names["events"]] == 3 and after[live_names["incidents"]] == 3
    # The live worker's table is left alone: its own versions and tombstones are right.
    assert after[live_names["incident-state"]] == 0
    assert "leave incident-state: the live worker keeps it" in out
    live_incidents = [
        jsonio.loads(r.value)["state"] for r in run(read_to_end(kafka, live_names["incidents"]))
    ]
    assert sorted(live_incidents) == ["open", "open", "resolved"]  # the open one stays open
