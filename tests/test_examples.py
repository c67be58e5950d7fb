"""The subscriber examples of docs/consuming.md and the README, run against a real worker's
output: the Python program, the README's ten lines, and Kafka's own console consumer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.shell.broker import cache_dir
from tests.kafka_util import (
    create_topics,
    fold_table,
    fold_versions,
    produce_with_headers,
    read_to_end,
    run,
    wait_caught_up,
)
from tests.services import start_worker
from tests.workload import build

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def incidents(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A worker's cfn.incidents with open and resolved incidents; yields (prefix, app id)."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"ex{token}.", f"ex-{token}"
    work = build(n_incidents=40, n_one_offs=10, now_ms=int(time.time() * 1000), seed=3)
    starts = [r for r in work.records if b"EVENT_START" in r[1]]
    ends = [r for r in work.records if b"EVENT_END" in r[1]]
    records = starts + ends[: len(ends) // 2] + [r for r in work.records if r not in starts + ends]
    run(create_topics(kafka, [f"{prefix}raw"], 4))
    run(produce_with_headers(kafka, f"{prefix}raw", records))
    worker = start_worker(tmp_path_factory.mktemp("ex"), kafka, prefix, app_id, partitions=4)
    try:
        run(wait_caught_up(kafka, app_id, f"{prefix}raw"))
    finally:
        worker.stop()
    yield prefix, app_id


def fold(kafka: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The highest version of every incident, from the whole of cfn.incidents."""
    return fold_versions(run(read_to_end(kafka, f"{prefix}incidents")))


def example(kafka: str, prefix: str, idle: float) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "examples" / "consume_incidents.py"),
        "--bootstrap",
        kafka,
        "--prefix",
        prefix,
        "--idle",
        str(idle),
    ]


def test_the_python_example_bootstraps_from_the_table_and_prints_the_open_incidents(
    kafka: str, incidents: tuple[str, str]
) -> None:
    prefix, _ = incidents
    latest = fold(kafka, prefix)
    want = {i for i, inc in latest.items() if inc["state"] == "open"}
    assert want and len(want) < len(latest), "the workload has open and closed incidents"
    table = fold_table(run(read_to_end(kafka, f"{prefix}incident-state")))
    assert table == {i: latest[i] for i in table}, "the table holds each incident's latest version"
    result = subprocess.run(
        example(kafka, prefix, 3), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    boot = re.search(r"^bootstrap: (\d+) incidents, (\d+) open", result.stdout, re.MULTILINE)
    assert boot is not None, result.stdout[-2000:]
    assert (int(boot[1]), int(boot[2])) == (len(table), len(want))
    printed = set(re.findall(r"^open (in_\w+)$", result.stdout, re.MULTILINE))
    assert printed == want
    assert f"open: {len(want)}" in result.stdout


def test_the_python_example_follows_the_history_after_its_bootstrap(
    kafka: str, tmp_path: Path
) -> None:
    """Incidents resolved after the example has read the table reach it through cfn.incidents."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"exf{token}.", f"exf-{token}"
    work = build(n_incidents=20, n_one_offs=0, now_ms=int(time.time() * 1000), seed=4)
    starts = [r for r in work.records if b"EVENT_START" in r[1]]
    ends = [r for r in work.records if b"EVENT_END" in r[1]]
    run(create_topics(kafka, [f"{prefix}raw"], 4))
    worker = start_worker(tmp_path, kafka, prefix, app_id, partitions=4)
    try:
        run(produce_with_headers(kafka, f"{prefix}raw", starts))
        run(wait_caught_up(kafka, app_id, f"{prefix}raw"))
        follower = subprocess.Popen(
            # Idle 15 s: the ENDs are produced and processed well within it, on a slow machine.
            example(kafka, prefix, 15),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.startswith(f"bootstrap: {work.pairs} incidents, {work.pairs} open"), first
        run(produce_with_headers(kafka, f"{prefix}raw", ends))
        run(wait_caught_up(kafka, app_id, f"{prefix}raw"))
        out, err = follower.communicate(timeout=120)
    finally:
        worker.stop()
    assert follower.returncode == 0, err
    resolved = set(re.findall(r"^resolved\s+(in_\w+) v2 ", out, re.MULTILINE))
    assert resolved == set(fold(kafka, prefix)), out[-2000:]
    assert "open: 0" in out


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Consume cfn.incidents in ten lines", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_the_readme_ten_lines_keep_the_highest_version(
    kafka: str, incidents: tuple[str, str], tmp_path: Path
) -> None:
    prefix, _ = incidents
    latest = fold(kafka, prefix)
    assert latest
    snippet = _readme_snippet()
    logic = [line for line in snippet.splitlines() if line.strip()]
    assert len(logic) <= 16, logic  # ten lines of logic, and the imports and settings
    script = tmp_path / "ten_lines.py"
    script.write_text(snippet)
    env = {**os.environ, "CFN_KAFKA_BOOTSTRAP": kafka, "CFN_TOPIC_PREFIX": prefix}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C's default: pytest-xdist's workers ignore SIGINT, and a child inherits that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        out, err = process.communicate(timeout=12)
    except subprocess.TimeoutExpired:  # it follows the topic forever: stop it
        os.killpg(process.pid, signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # (what it printed is what this test reads)
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate(timeout=30)
    seen: dict[str, int] = {}
    for state, incident_id, version in re.findall(r"^(\w+) (in_\w+) (\d+)$", out, re.MULTILINE):
        assert int(version) > seen.get(incident_id, 0), "a version printed twice or out of order"
        seen[incident_id] = int(version)
        assert state in ("open", "resolved", "expired", "orphan_end")
    assert seen == {i: inc["version"] for i, inc in latest.items()}, err[-2000:]


def console_consumer(kafka: str, topic: str) -> list[tuple[str, str]]:
    """Kafka's own console consumer, read_committed, from the beginning: (key, value) lines."""
    command = [
        "java",
        "-cp",
        f"{cache_dir() / 'libs'}/*",
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        "--bootstrap-server",
        kafka,
        "--topic",
        topic,
        "--from-beginning",
        "--isolation-level",
        "read_committed",
        "--formatter-property",
        "print.key=true",
        "--timeout-ms",
        "8000",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    # Records are "key<TAB>value" lines; the tool adds a few lines of its own.
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return [(key, value) for key, value in (line.split("\t", 1) for line in lines)]


def test_kafkas_console_consumer_reads_committed_incidents(
    kafka: str, incidents: tuple[str, str]
) -> None:
    prefix, _ = incidents
    total = len(run(read_to_end(kafka, f"{prefix}incidents")))
    lines = console_consumer(kafka, f"{prefix}incidents")
    assert len(lines) == total
    for key, value in lines:
        incident = json.loads(value)
        assert key.startswith("default|") and incident["incident_id"].startswith("in_")


def test_kafkas_console_consumer_reads_the_incident_table(
    kafka: str, incidents: tuple[str, str]
) -> None:
    """The docs' console line for cfn.incident-state: folded by key, it is the open and closed
    incidents' latest versions (tombstones print as null)."""
    prefix, _ = incidents
    table: dict[str, Any] = {}
    for key, value in console_consumer(kafka, f"{prefix}incident-state"):
        if value == "null":
            table.pop(key, None)
        else:
            table[key] = json.loads(value)
    assert table == fold(kafka, prefix)
