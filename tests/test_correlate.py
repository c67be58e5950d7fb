"""processors.correlate: START/END pairing, held ENDs, re-notifications, timers and recovery."""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.processors import incident
from cfn.processors.clock import FakeClock
from cfn.processors.correlate import Correlator
from cfn.processors.incident import ST, Incident
from cfn.schemas import jsonio
from cfn.schemas.payload import Notification, parse
from cfn.schemas.records import IncidentRecord
from tests.payloads import SAVE_AND_TEST, alert, encode

TENANT = "acme"
TYPE = "health_check_status_notification"
STALE = 3600
HOLD = 300
RETENTION = 86_400
T0 = 1_700_000_000
ALERT_EVENTS = {"start": "ALERT_STATE_EVENT_START", "end": "ALERT_STATE_EVENT_END"}


def note(
    event: str | None,
    clock: FakeClock,
    *,
    ts: int | None = None,
    corr: str | None = "corr-1",
    account: str = "acc-1",
    alert_type: str = TYPE,
    tenant: str = TENANT,
    **extra: Any,
) -> Notification:
    """A parsed notification received now (by the clock); `ts` defaults to the same second."""
    now = int(clock())
    body = alert(
        account=account,
        correlation=corr,
        event=ALERT_EVENTS.get(event or "", event),
        alert_type=alert_type,
        ts=now if ts is None else ts,
        **extra,
    )
    parsed = parse(encode(body), tenant, now * 1000)
    assert isinstance(parsed, Notification), parsed
    return parsed


def correlator(store: dict[str, Incident] | None = None, **overrides: Any) -> Correlator:
    options: dict[str, Any] = {
        "stale_after": lambda _alert_type: STALE,
        "orphan_hold_s": HOLD,
        "closed_retention_s": RETENTION,
        **overrides,
    }
    return Correlator(store={} if store is None else store, **options)


def correlation_of(key: str) -> str:
    """The correlation id in a table key (`correlation_key`)."""
    correlation_id: str = jsonio.loads(key)[2]
    return correlation_id


def only(records: list[IncidentRecord]) -> IncidentRecord:
    assert len(records) == 1, records
    return records[0]


# ---- pairing ---------------------------------------------------------------------------------


def test_start_then_end_opens_then_resolves() -> None:
    clock = FakeClock(T0)
    c = correlator()
    start = note("start", clock, ts=T0 - 5)
    opened = only(c.on_event(start, 0))
    assert (opened.state, opened.version) == ("open", 1)
    assert opened.opened_at == start.ts
    assert (opened.closed_at, opened.duration_s, opened.close_reason) == (None, None, None)
    assert opened.ordering == "in_order"
    assert opened.first_event_id == opened.last_event_id == start.event_id
    assert (opened.tenant, opened.account_id, opened.alert_type) == (TENANT, "acc-1", TYPE)
    assert opened.correlation_id == "corr-1"

    clock.advance(700)
    end = note("end", clock, ts=T0 + 690)
    resolved = only(c.on_event(end, 0))
    assert resolved.incident_id == opened.incident_id
    assert (resolved.state, resolved.version) == ("resolved", 2)
    assert resolved.closed_at == end.ts
    assert resolved.duration_s == end.ts - start.ts
    assert resolved.close_reason == "end"
    assert resolved.first_event_id == start.event_id
    assert resolved.last_event_id == end.event_id
    assert resolved.renotify_count == 0
    assert c.open_by_type[TYPE] == 0


def test_end_before_start_is_held_then_paired() -> None:
    clock = FakeClock(T0)
    c = correlator()
    end = note("end", clock, ts=T0 + 120)
    assert c.on_event(end, 0) == []
    assert c.open_by_type[TYPE] == 0
    clock.advance(30)  # the START arrives later, within the hold
    start = note("start", clock, ts=T0 - 60)
    first, second = c.on_event(start, 0)
    assert first.incident_id == second.incident_id
    assert (first.state, first.version, second.state, second.version) == (
        "open",
        1,
        "resolved",
        2,
    )
    assert first.ordering == second.ordering == "end_before_start"
    assert first.opened_at == second.opened_at == start.ts
    assert second.closed_at == end.ts
    assert second.duration_s == end.ts - start.ts
    assert second.close_reason == "end"
    assert second.first_event_id == start.event_id
    assert second.last_event_id == end.event_id
    assert c.open_by_type[TYPE] == 0
    # The hold timer is superseded: no orphan later.
    assert c.tick(T0 + HOLD + 1, 0) == []


def test_held_end_without_start_becomes_orphan_after_the_hold() -> None:
    clock = FakeClock(T0)
    c = correlator()
    end = note("end", clock, ts=T0 - 10)
    assert c.on_event(end, 0) == []
    assert c.tick(T0 + HOLD - 1, 0) == []
    orphan = only(c.tick(T0 + HOLD, 0))
    assert (orphan.state, orphan.version) == ("orphan_end", 1)
    assert orphan.close_reason == "orphan_end"
    assert orphan.opened_at is None
    assert orphan.closed_at == end.ts
    assert orphan.duration_s is None
    assert orphan.first_event_id == orphan.last_event_id == end.event_id
    assert c.open_by_type[TYPE] == 0
    # A second END for the orphaned incident adds nothing.
    clock.advance(HOLD + 10)
    assert c.on_event(note("end", clock, ts=T0 + 400), 0) == []


def test_second_end_while_held_adds_nothing() -> None:
    clock = FakeClock(T0)
    c = correlator()
    assert c.on_event(note("end", clock), 0) == []
    clock.advance(5)
    assert c.on_event(note("end", clock), 0) == []
    assert len(c.tick(T0 + HOLD, 0)) == 1


def test_renotification_bumps_version_and_count_on_the_same_incident() -> None:
    clock = FakeClock(T0)
    c = correlator()
    start = note("start", clock)
    opened = only(c.on_event(start, 0))
    records = [opened]
    for n in range(1, 4):
        clock.advance(600)
        again = note("start", clock)
        record = only(c.on_event(again, 0))
        assert record.incident_id == opened.incident_id
        assert (record.state, record.version, record.renotify_count) == ("open", n + 1, n)
        assert record.opened_at == start.ts  # the first START still dates the incident
        assert record.first_event_id == start.event_id
        assert record.last_event_id == again.event_id
        records.append(record)
    assert c.open_by_type[TYPE] == 1
    clock.advance(60)
    end = note("end", clock)
    resolved = only(c.on_event(end, 0))
    assert (resolved.version, resolved.renotify_count) == (5, 3)
    assert resolved.duration_s == end.ts - start.ts
    assert len({(r.incident_id, r.version) for r in [*records, resolved]}) == 5


def test_renotification_pushes_the_stale_deadline_back() -> None:
    clock = FakeClock(T0)
    c = correlator()
    c.on_event(note("start", clock), 0)
    clock.advance(3000)
    c.on_event(note("start", clock), 0)
    assert c.tick(T0 + STALE, 0) == []  # the first deadline was superseded
    assert c.tick(T0 + 3000 + STALE - 1, 0) == []
    assert only(c.tick(T0 + 3000 + STALE, 0)).state == "expired"


# ---- expiry ----------------------------------------------------------------------------------


def test_stale_incident_expires_on_tick() -> None:
    clock = FakeClock(T0)
    c = correlator()
    opened = only(c.on_event(note("start", clock), 0))
    assert c.tick(T0 + STALE - 1, 0) == []
    assert c.open_by_type[TYPE] == 1
    expired = only(c.tick(T0 + STALE + 0.5, 0))
    assert expired.incident_id == opened.incident_id
    assert (expired.state, expired.version) == ("expired", 2)
    assert expired.close_reason == "stale_timeout"
    assert expired.closed_at == T0 + STALE  # the expiry time, in whole seconds
    assert expired.late_end is False
    assert c.open_by_type[TYPE] == 0
    assert c.tick(T0 + STALE + 10, 0) == []  # fires once


def test_stale_timeout_depends_on_alert_type() -> None:
    clock = FakeClock(T0)
    timeouts = {"fast_type": 60}
    c = correlator(stale_after=lambda alert_type: timeouts.get(alert_type, STALE))
    fast = only(c.on_event(note("start", clock, corr="a", alert_type="fast_type"), 0))
    slow = only(c.on_event(note("start", clock, corr="b"), 0))
    expired = only(c.tick(T0 + 60, 0))
    assert expired.incident_id == fast.incident_id
    assert only(c.tick(T0 + STALE, 0)).incident_id == slow.incident_id


def test_late_end_after_expiry_is_flagged_without_reopening() -> None:
    clock = FakeClock(T0)
    c = correlator()
    start = note("start", clock)
    opened = only(c.on_event(start, 0))
    only(c.tick(T0 + STALE, 0))
    clock.advance(STALE + 100)
    end = note("end", clock, ts=T0 + STALE + 90)
    late = only(c.on_event(end, 0))
    assert late.incident_id == opened.incident_id
    assert (late.state, late.version, late.late_end) == ("expired", 3, True)
    assert late.close_reason == "stale_timeout"
    assert late.duration_s == end.ts - start.ts
    assert late.last_event_id == end.event_id
    assert c.open_by_type[TYPE] == 0
    clock.advance(5)
    assert c.on_event(note("end", clock), 0) == []  # flagged once


def test_start_after_close_begins_a_new_incident() -> None:
    clock = FakeClock(T0)
    c = correlator()
    first = only(c.on_event(note("start", clock), 0))
    clock.advance(10)
    c.on_event(note("end", clock), 0)
    clock.advance(10)
    second = only(c.on_event(note("start", clock), 0))
    assert second.incident_id != first.incident_id
    assert (second.state, second.version, second.renotify_count) == ("open", 1, 0)
    assert c.open_by_type[TYPE] == 1


def test_closed_incidents_are_forgotten_after_retention() -> None:
    clock = FakeClock(T0)
    c = correlator()
    c.on_event(note("start", clock, corr="resolved"), 0)
    c.on_event(note("start", clock, corr="expired"), 0)
    c.on_event(note("end", clock, corr="orphan"), 0)
    clock.advance(60)
    c.on_event(note("end", clock, corr="resolved"), 0)
    assert len(c.tick(T0 + HOLD, 0)) == 1  # orphan
    assert len(c.tick(T0 + STALE, 0)) == 1  # expired
    assert len(c.store) == 3
    assert c.tick(T0 + 60 + RETENTION - 1, 0) == []
    assert len(c.store) == 3
    assert c.tick(T0 + 60 + RETENTION, 0) == []
    assert {correlation_of(k) for k in c.store} == {"orphan", "expired"}
    assert c.tick(T0 + HOLD + RETENTION, 0) == []
    assert {correlation_of(k) for k in c.store} == {"expired"}
    assert c.tick(T0 + STALE + RETENTION, 0) == []
    assert c.store == {}


# ---- what is not an incident -----------------------------------------------------------------


def test_events_without_correlation_or_start_end_produce_nothing() -> None:
    clock = FakeClock(T0)
    c = correlator()
    ignored = [
        note("start", clock, corr=None),
        note("end", clock, corr=None),
        note("start", clock, corr=""),
        note("ALERT_STATE_EVENT_UPDATE", clock),
        note("firing", clock),
        note(None, clock),
    ]
    test_message = parse(SAVE_AND_TEST, TENANT, T0 * 1000)
    assert isinstance(test_message, Notification) and test_message.kind == "test"
    for n in [*ignored, test_message]:
        assert c.on_event(n, 0) == []
    assert c.store == {}
    assert c.tick(T0 + RETENTION * 2, 0) == []
    assert +c.open_by_type == Counter()


# ---- identity --------------------------------------------------------------------------------


def script(c: Correlator) -> list[IncidentRecord]:
    clock = FakeClock(T0)
    out = c.on_event(note("start", clock, corr="x"), 0)
    out += c.on_event(note("end", clock, corr="y", account="acc-2"), 1)
    clock.advance(120)
    out += c.on_event(note("start", clock, corr="x"), 0)
    out += c.on_event(note("end", clock, corr="x"), 0)
    out += c.tick(T0 + HOLD, 1)
    return out


def test_incident_ids_are_deterministic_across_instances() -> None:
    first, second = script(correlator()), script(correlator())
    assert first == second
    assert len(first) == 4
    assert {r.incident_id for r in first if r.correlation_id == "x"} == {first[0].incident_id}


def test_incident_id_depends_on_tenant_account_and_correlation() -> None:
    clock = FakeClock(T0)
    variants = [
        note("start", clock),
        note("start", clock, tenant="globex"),
        note("start", clock, account="acc-2"),
        note("start", clock, corr="corr-2"),
    ]
    ids = {only(correlator().on_event(n, 0)).incident_id for n in variants}
    assert len(ids) == len(variants)


def test_correlation_keys_do_not_collide_on_separator_characters() -> None:
    """(account x|y, correlation z) and (account x, correlation y|z) are two incidents."""
    clock = FakeClock(T0)
    c = correlator()
    first = only(c.on_event(note("start", clock, account="x|y", corr="z"), 0))
    second = only(c.on_event(note("start", clock, account="x", corr="y|z"), 0))
    assert second.incident_id != first.incident_id
    assert (second.version, second.renotify_count) == (1, 0)
    assert (second.account_id, second.correlation_id) == ("x", "y|z")


def test_catalog_description_is_attached_to_every_version() -> None:
    clock = FakeClock(T0)
    described: list[str | None] = []

    def describe(alert_type: str | None) -> dict[str, str | None] | None:
        described.append(alert_type)
        return {"title": f"title of {alert_type}"}

    c = correlator(describe=describe)
    opened = only(c.on_event(note("start", clock), 0))
    assert opened.catalog == {"title": f"title of {TYPE}"}
    assert described == [TYPE]


# ---- bookkeeping -----------------------------------------------------------------------------


def test_open_by_type_counts_open_incidents() -> None:
    clock = FakeClock(T0)
    c = correlator()
    for i in range(3):
        c.on_event(note("start", clock, corr=f"a{i}", alert_type="type_a"), 0)
    c.on_event(note("start", clock, corr="b0", alert_type="type_b"), 0)
    c.on_event(note("start", clock, corr="a0", alert_type="type_a", seq=2), 0)  # renotify
    assert c.open_by_type == Counter({"type_a": 3, "type_b": 1})
    clock.advance(10)
    c.on_event(note("end", clock, corr="a1", alert_type="type_a"), 0)
    c.on_event(note("end", clock, corr="held", alert_type="type_a"), 0)  # held: not open
    assert +c.open_by_type == Counter({"type_a": 2, "type_b": 1})
    c.tick(T0 + STALE, 0)
    assert +c.open_by_type == Counter()


def test_timers_fire_per_partition() -> None:
    clock = FakeClock(T0)
    c = correlator()
    c.on_event(note("start", clock, corr="p0"), 0)
    c.on_event(note("start", clock, corr="p1"), 1)
    assert c.tick(T0 + STALE, 2) == []
    fired = only(c.tick(T0 + STALE, 1))
    assert fired.correlation_id == "p1"
    assert only(c.tick(T0 + STALE, 0)).correlation_id == "p0"


def test_rebuild_after_restart_fires_pending_timers() -> None:
    clock = FakeClock(T0)
    store: dict[str, Incident] = {}
    before = correlator(store)
    opened = only(before.on_event(note("start", clock, corr="open"), 0))
    before.on_event(note("end", clock, corr="held"), 0)
    before.on_event(note("start", clock, corr="done"), 1)
    clock.advance(30)
    before.on_event(note("end", clock, corr="done"), 1)
    del before  # the worker restarts; only the changelog-backed mapping survives

    after = correlator(store)
    after.rebuild(store.items())
    assert +after.open_by_type == Counter({TYPE: 1})
    orphan = only(after.tick(T0 + HOLD, 0))
    assert (orphan.state, orphan.correlation_id) == ("orphan_end", "held")
    expired = only(after.tick(T0 + STALE, 0))
    assert (expired.incident_id, expired.state, expired.version) == (
        opened.incident_id,
        "expired",
        2,
    )
    assert +after.open_by_type == Counter()
    assert after.tick(T0 + 30 + RETENTION, 1) == []
    states = {correlation_of(k): s[ST] for k, s in store.items()}
    assert states == {"open": "expired", "held": "orphan_end"}


# ---- properties ------------------------------------------------------------------------------

ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["start", "start", "end", "tick"]),
        st.integers(0, 2),  # which correlation id
        st.integers(0, 2 * STALE),  # seconds before this step
        st.integers(0, 120),  # how far ts lags receipt
    ),
    max_size=40,
)

FINAL_STATES = {"resolved", "orphan_end"}
REASONS = {"open": None, "resolved": "end", "expired": "stale_timeout", "orphan_end": "orphan_end"}


def run_ops(
    c: Correlator, ops: list[tuple[str, int, int, int]], clock: FakeClock, first_seq: int
) -> list[IncidentRecord]:
    out: list[IncidentRecord] = []
    for seq, (op, corr, step, lag) in enumerate(ops, start=first_seq):
        clock.advance(step)
        if op == "tick":
            out += c.tick(clock(), 0) + c.tick(clock(), 1)
        else:
            n = note(op, clock, corr=f"c{corr}", ts=int(clock()) - lag, seq=seq)
            out += c.on_event(n, corr % 2)
    return out


@settings(max_examples=300, deadline=None)
@given(ops_strategy, st.integers(0, 40))
def test_incident_versions_are_unique_ordered_and_consistent(
    ops: list[tuple[str, int, int, int]], split: int
) -> None:
    clock = FakeClock(T0)
    c = correlator()
    records = run_ops(c, ops[:split], clock, 0)
    # A restart at `split`: a rebuilt copy must go on exactly as the original.
    restored = correlator(copy.deepcopy(dict(c.store)))
    restored.rebuild(restored.store.items())
    assert restored.open_by_type == +c.open_by_type
    twin_clock = FakeClock(clock())
    tail = run_ops(c, ops[split:], clock, split)
    assert run_ops(restored, ops[split:], twin_clock, split) == tail
    records += tail

    versions: dict[str, list[IncidentRecord]] = defaultdict(list)
    for r in records:
        versions[r.incident_id].append(r)
    assert len({(r.incident_id, r.version) for r in records}) == len(records)
    for history in versions.values():
        assert [r.version for r in history] == list(range(1, len(history) + 1))
        for earlier in history[:-1]:
            assert earlier.state not in FINAL_STATES
        if history[-1].state == "expired" and history[-1].late_end:
            assert sum(r.late_end for r in history) == 1
    for r in records:
        assert r.close_reason == REASONS[r.state]
        if r.state == "resolved":
            assert r.opened_at is not None and r.closed_at is not None
            assert r.duration_s == r.closed_at - r.opened_at
        if r.state == "open" and r.ordering == "in_order":
            assert r.renotify_count == r.version - 1
    opened = Counter(s[incident.TYPE] for s in c.store.values() if s[ST] == "open")
    assert +c.open_by_type == opened
