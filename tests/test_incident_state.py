"""cfn.incident-state: each incident version mirrored by incident_id, tombstones after retention."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cfn.processors.incident_state import StateRetention
from cfn.processors.metrics import WorkerMetrics
from cfn.processors.pipeline import Output, Pipeline
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio
from cfn.schemas.records import IncidentRecord
from tests.kafka_util import (
    create_topics,
    fold_table,
    fold_versions,
    produce_with_headers,
    read_to_end,
    run,
    wait_caught_up,
)
from tests.payloads import alert, encode
from tests.services import start_worker
from tests.workload import build

NOW = 1_790_000_000
HOUR = 3600.0
START, END = "ALERT_STATE_EVENT_START", "ALERT_STATE_EVENT_END"


class Stores:
    """The four mappings a worker keeps in changelog tables, as plain dicts."""

    def __init__(self) -> None:
        self.dedup: dict[str, Any] = {}
        self.incidents: dict[str, Any] = {}
        self.rates: dict[str, Any] = {}
        self.retention: dict[str, Any] = {}

    def pipeline(self, **overrides: Any) -> Pipeline:
        options: dict[str, Any] = {
            "incident_state_retention": 2 * HOUR,
            "dedup_window": HOUR,
            "stale_after": 10 * HOUR,
            "orphan_end_hold": 60.0,
        }
        options.update(overrides)
        p = Pipeline(
            WorkerSettings(**options),
            self.dedup,
            self.incidents,
            self.rates,
            WorkerMetrics.create(CollectorRegistry()),
            clock=lambda: float(NOW),
            retention_store=self.retention,
        )
        p.rebuild(
            self.dedup.items(), self.incidents.items(), self.rates.items(), self.retention.items()
        )
        return p


def event(
    p: Pipeline, kind: str, at: float, correlation: str = "c1", offset: int = 0
) -> list[Output]:
    body = encode(alert(correlation=correlation, event=kind, ts=int(at), account="a1"))
    return p.on_raw(body, b"k", {}, 0, offset, int(at * 1000))


def state_outputs(outputs: list[Output]) -> list[Output]:
    return [o for o in outputs if o.role == "incident-state"]


def test_every_incident_version_is_mirrored_under_its_incident_id() -> None:
    p = Stores().pipeline()
    opened = event(p, START, NOW)
    resolved = event(p, END, NOW + 60, offset=1)
    for outputs in (opened, resolved):
        history = [o for o in outputs if o.role == "incidents"]
        mirror = state_outputs(outputs)
        assert len(history) == len(mirror) == 1
        assert mirror[0].value == history[0].value  # the same bytes, the same version
        assert mirror[0].value is not None
        assert mirror[0].key == jsonio.loads(mirror[0].value)["incident_id"].encode()
    assert [
        jsonio.loads(o.value or b"")["state"] for o in opened + resolved if o.role == "incidents"
    ] == [
        "open",
        "resolved",
    ]


def test_a_closed_incident_is_tombstoned_once_its_retention_has_passed() -> None:
    p = Stores().pipeline()
    event(p, START, NOW)
    resolved = state_outputs(event(p, END, NOW + 60, offset=1))[0]
    closed_at = NOW + 60
    assert state_outputs(p.on_tick(closed_at + 2 * HOUR - 1, 0)) == []
    gone = state_outputs(p.on_tick(closed_at + 2 * HOUR, 0))
    assert gone == [Output("incident-state", resolved.key, None)]
    assert state_outputs(p.on_tick(closed_at + 10 * HOUR, 0)) == []  # once only


def test_an_open_incident_stays_until_it_closes() -> None:
    p = Stores().pipeline(stale_after=100 * HOUR)
    event(p, START, NOW)
    assert state_outputs(p.on_tick(NOW + 50 * HOUR, 0)) == []


def test_an_expired_incident_is_kept_for_the_retention_after_it_expired() -> None:
    p = Stores().pipeline(stale_after=HOUR)
    event(p, START, NOW)
    expired = state_outputs(p.on_tick(NOW + HOUR, 0))
    assert [jsonio.loads(o.value or b"")["state"] for o in expired] == ["expired"]
    assert state_outputs(p.on_tick(NOW + 3 * HOUR - 1, 0)) == []
    assert state_outputs(p.on_tick(NOW + 3 * HOUR, 0)) == [
        Output("incident-state", expired[0].key, None)
    ]


def test_a_late_end_restarts_the_retention_of_an_expired_incident() -> None:
    p = Stores().pipeline(stale_after=HOUR)
    event(p, START, NOW)
    p.on_tick(NOW + HOUR, 0)  # expired
    late = state_outputs(event(p, END, NOW + 2 * HOUR, offset=1))
    assert jsonio.loads(late[0].value or b"")["late_end"] is True
    assert state_outputs(p.on_tick(NOW + 3 * HOUR, 0)) == []  # not the first closing's due
    assert state_outputs(p.on_tick(NOW + 4 * HOUR, 0)) == [
        Output("incident-state", late[0].key, None)
    ]


def test_the_schedule_survives_a_restart_from_the_stores() -> None:
    stores = Stores()
    first = stores.pipeline()
    event(first, START, NOW)
    key = state_outputs(event(first, END, NOW + 60, offset=1))[0].key
    again = stores.pipeline()  # a new worker: timers rebuilt from the tables alone
    assert state_outputs(again.on_tick(NOW + 60 + 2 * HOUR, 0)) == [
        Output("incident-state", key, None)
    ]
    assert stores.retention == {}  # forgotten by the table too


def test_retention_ignores_a_superseded_due_time() -> None:
    store: dict[str, Any] = {}
    r = StateRetention(store, retention_s=10.0)
    record = _record("in_1", "expired")
    r.on_version(record, 100.0, 0)
    r.on_version(_record("in_1", "expired", late_end=True), 105.0, 0)
    assert r.tick(110.0, 0) == []
    assert r.tick(115.0, 0) == ["in_1"]
    assert r.tick(1000.0, 0) == []


def _record(incident_id: str, state: str, late_end: bool = False) -> IncidentRecord:
    return IncidentRecord(
        incident_id=incident_id,
        version=1,
        state=state,
        tenant="default",
        account_id="a1",
        alert_type=None,
        correlation_id="c",
        opened_at=1,
        closed_at=2,
        duration_s=1,
        close_reason="stale_timeout",
        renotify_count=0,
        ordering="in_order",
        late_end=late_end,
        first_event_id="e1",
        last_event_id="e2",
        catalog=None,
    )


def test_one_late_tick_decides_what_regular_ticks_decide() -> None:
    """A replay fires its timers in one tick at its end: the table it writes must be the one
    the live worker's regular ticks wrote by then (expiry and orphan times come from their
    deadlines, not from the tick that noticed them)."""

    def table(ticks: list[float]) -> dict[bytes, bytes | None]:
        p = Stores().pipeline(stale_after=HOUR, orphan_end_hold=600.0)
        outputs = event(p, START, NOW, "stale")  # expires at NOW + 1h
        outputs += event(p, END, NOW + 10, "orphan", offset=1)  # released at NOW + 610
        outputs += event(p, START, NOW + 20, "paired", offset=2)
        outputs += event(p, END, NOW + 80, "paired", offset=3)  # resolved at NOW + 80
        for at in ticks:
            outputs += p.on_tick(at, 0)
        folded: dict[bytes, bytes | None] = {}
        for out in state_outputs(outputs):
            folded[out.key] = out.value
        return folded

    end = NOW + HOUR + 2 * HOUR + 30  # past the stale one's retention by 30 s
    regular = table([NOW + 15 * i for i in range(1, int((end - NOW) / 15) + 1)])
    single = table([end])
    assert single == regular
    assert sorted(v is None for v in single.values()) == [True, True, True]
    early = table([NOW + HOUR + 2 * HOUR - 1])  # one second before the stale one's due
    assert [v is None for v in early.values()].count(True) == 2


# ---- the property subscribers rely on -----------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("start"), st.integers(0, 3), st.integers(1, 900)),
    st.tuples(st.just("end"), st.integers(0, 3), st.integers(1, 900)),
    st.tuples(st.just("tick"), st.just(0), st.integers(1, 3 * 3600)),
)


def changed_at(record: dict[str, Any], event_time: float | None) -> float:
    """When a version's change happened: its event's time, or for a timer's change the
    deadline that fired (expired: `closed_at`; orphan_end: the held END's time + the hold)."""
    if event_time is not None:
        return event_time
    if record["state"] == "orphan_end":
        return float(record["closed_at"]) + 600.0
    return float(record["closed_at"])


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, max_size=60), restart_at=st.integers(0, 60))
def test_the_table_folds_to_the_open_and_recently_closed_incidents_of_the_history(
    steps: list[tuple[str, int, int]], restart_at: int
) -> None:
    """Folding cfn.incident-state (last value per key, tombstones delete) gives exactly the
    latest version of every incident in cfn.incidents that is open, or whose closing change
    happened less than the retention before the last tick; also across a restart that rebuilds
    everything from the stores."""
    stores = Stores()
    p = stores.pipeline(stale_after=HOUR, orphan_end_hold=600.0)
    clock = float(NOW)
    history: dict[str, tuple[int, dict[str, Any], float]] = {}  # id -> (version, record, at)
    table: dict[bytes, bytes] = {}
    last_tick = float("-inf")  # tombstones are written by ticks only
    for i, (kind, corr, advance) in enumerate(steps):
        if i == restart_at:
            p = stores.pipeline(stale_after=HOUR, orphan_end_hold=600.0)
        clock += advance
        if kind == "tick":
            outputs = p.on_tick(clock, 0)
            last_tick = clock
        else:
            outputs = event(p, START if kind == "start" else END, clock, f"c{corr}", offset=i)
        for out in outputs:
            if out.role == "incidents":
                assert out.value is not None
                record = jsonio.loads(out.value)
                known = history.get(record["incident_id"])
                if known is None or record["version"] > known[0]:
                    history[record["incident_id"]] = (
                        record["version"],
                        record,
                        changed_at(record, clock if kind != "tick" else None),
                    )
            elif out.role == "incident-state":
                if out.value is None:
                    table.pop(out.key, None)
                else:
                    table[out.key] = out.value
    expected = {
        incident_id.encode(): record
        for incident_id, (_v, record, at) in history.items()
        if record["state"] == "open" or at + 2 * HOUR > last_tick
    }
    assert {key: jsonio.loads(value) for key, value in table.items()} == expected


# ---- against the real broker ---------------------------------------------------------------------


@pytest.mark.broker
def test_closed_incidents_leave_the_table_after_the_retention_across_a_restart(
    kafka: str, tmp_path: Path
) -> None:
    """With a short retention, the table keeps the open incidents and forgets the resolved ones
    (tombstones), even though the worker that closed them stopped before their retention was
    over: the timers come back from the changelog. cfn.incidents keeps the whole history."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"is{token}.", f"is-{token}"
    retention = {"CFN_INCIDENT_STATE_RETENTION": "15s"}  # longer than the first run takes
    run(create_topics(kafka, [f"{prefix}raw"], 4))
    first = start_worker(tmp_path, kafka, prefix, app_id, retention, partitions=4)
    try:
        # Received now, with the worker ready: the retention runs from here.
        work = build(n_incidents=40, n_one_offs=0, now_ms=int(time.time() * 1000), seed=9)
        kept_open = [f'"alert_correlation_id":"corr-9-{i}"'.encode() for i in range(10)]
        records = [  # incidents 0-9 never end (every copy of their END is left out)
            r
            for r in work.records
            if b"EVENT_END" not in r[1] or not any(k in r[1] for k in kept_open)
        ]
        run(produce_with_headers(kafka, f"{prefix}raw", records))
        run(wait_caught_up(kafka, app_id, f"{prefix}raw"))
    finally:
        first.stop()
    history = fold_versions(run(read_to_end(kafka, f"{prefix}incidents")))
    still_open = {i for i, inc in history.items() if inc["state"] == "open"}
    closed = {i for i, inc in history.items() if inc["state"] != "open"}
    assert (len(still_open), len(closed)) == (10, 30)
    table = run(read_to_end(kafka, f"{prefix}incident-state"))
    assert set(fold_table(table)) == still_open | closed, "closed too soon"

    again = start_worker(tmp_path, kafka, prefix, app_id, retention, partitions=4)
    try:
        deadline = time.monotonic() + 60
        while set(view := fold_table(run(read_to_end(kafka, f"{prefix}incident-state")))) != (
            still_open
        ):
            assert time.monotonic() < deadline, f"{len(view)} incidents in the table"
            time.sleep(1.0)
    finally:
        again.stop()
    table = run(read_to_end(kafka, f"{prefix}incident-state"))
    tombstones = [r.key.decode() for r in table if r.value is None]
    assert sorted(tombstones) == sorted(closed), "one tombstone per closed incident"
    assert view == {i: history[i] for i in view}  # the open ones at their latest version
    assert fold_versions(run(read_to_end(kafka, f"{prefix}incidents"))) == history
    shown = subprocess.run(
        [sys.executable, "-m", "cfn", "tail", "incident-state", "--from-beginning", "--idle", "3"],
        env={**os.environ, "CFN_KAFKA_BOOTSTRAP": kafka, "CFN_TOPIC_PREFIX": prefix},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.stdout.count("deleted (tombstone)") == len(closed), shown.stdout[-2000:]
