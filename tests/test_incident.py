"""processors.incident: the compact incident state and its changelog formats (1 read, 2 written)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from cfn.processors.clock import FakeClock
from cfn.processors.correlate import Correlator
from cfn.processors.engine import ChangelogTable
from cfn.processors.incident import (
    FIRST,
    KEY,
    LAST,
    ST,
    Incident,
    compact_id,
    decode,
    encode,
    full_id,
)
from cfn.processors.worker import changelog_tables
from cfn.schemas import jsonio
from cfn.schemas.records import IncidentRecord
from tests.test_correlate import T0, correlator, note, ops_strategy, run_ops

FORMAT_1 = Path(__file__).parent / "data" / "incidents_format_1.json"
CANONICAL = "ev_63d679f435f32f00f039f36209051587"


def restore(table: ChangelogTable, records: dict[str, bytes]) -> None:
    """What the engine does with a changelog on restore: decode and load, not a change."""
    for key, value in records.items():
        table.load(key, table.decode(value))


def commit(table: ChangelogTable, partitions: range) -> dict[str, bytes]:
    """What the engine writes to the changelog at a commit: the changed keys, encoded."""
    return {
        key: table.encode(value)
        for partition in partitions
        for key, value in table.drain(partition)
        if value is not None
    }


def test_the_worker_writes_the_incidents_table_in_its_own_format() -> None:
    tables = changelog_tables()
    assert (tables["incidents"].encode, tables["incidents"].decode) == (encode, decode)
    assert tables["dedup"].encode is not encode


def test_canonical_event_ids_are_kept_as_one_int_and_others_as_they_are() -> None:
    assert compact_id(CANONICAL) == int(CANONICAL[3:], 16)
    assert full_id(compact_id(CANONICAL)) == CANONICAL
    assert full_id(compact_id("ev_" + "0" * 32)) == "ev_" + "0" * 32
    odd = ["e1", "ev_" + "A" * 32, "ev_+" + "0" * 31, "ev_" + "0_" * 16, "ev_" + "g" * 32, ""]
    for event_id in odd:
        assert compact_id(event_id) == event_id and full_id(event_id) == event_id


def test_a_format_1_changelog_restores_and_goes_on_as_the_previous_version_did() -> None:
    """A worker upgraded in place restores from the dict values its predecessor wrote: the
    records after the restore are those the previous version emitted (tests/data), and what it
    writes back is format 2."""
    data = jsonio.loads(FORMAT_1.read_bytes())
    table = changelog_tables()["incidents"]
    restore(table, {key: value.encode() for key, value in data["changelog"].items()})
    c = Correlator(
        table, stale_after=lambda _t: 3600.0, orphan_hold_s=300, closed_retention_s=86400
    )
    c.rebuild(table.items())
    assert {key: state[ST] for key, state in table.items()} == {
        '["acme","acc-1","open"]': "open",
        '["acme","","stale"]': "expired",
        '["acme","acc-1","held"]': "held",
    }
    stale_key = '["acme","","stale"]'
    stale_id = jsonio.loads(data["changelog"][stale_key])["id"]
    clock = FakeClock(T0 + 4160)
    out: list[IncidentRecord | None] = []
    out += c.on_event(note("start", clock, corr="held", ts=int(clock()) - 30), 2)
    second_end = dataclasses.replace(note("end", clock, corr="stale"), account_id=None)
    out += c.on_event(second_end, 1)  # a second late END: nothing
    out.append(c.mark_flap(stale_key, stale_id, "fl_2"))
    out += c.tick(T0 + 60 + 3600, 0)
    clock.advance(10)
    out += c.on_event(note("end", clock, corr="open"), 0)
    assert [jsonio.loads(jsonio.dumps(r)) for r in out] == data["records"]
    written = commit(table, range(3))
    assert set(written) == set(data["changelog"])
    assert all(jsonio.loads(value)[0] == 2 for value in written.values())


def test_each_format_1_state_reads_as_its_own_fields() -> None:
    data = jsonio.loads(FORMAT_1.read_bytes())
    for text in data["changelog"].values():
        old: dict[str, Any] = jsonio.loads(text)
        state = decode(text.encode())
        assert state[KEY] is None  # the table's key, set by Correlator.rebuild
        assert (state.p, state[ST], full_id(state[FIRST]), full_id(state[LAST])) == (
            old["p"],
            old["st"],
            old["first"],
            old["last"],
        )
        again = decode(encode(state))
        assert again == state


@settings(max_examples=200, deadline=None)
@given(ops_strategy)
def test_a_worker_restored_from_its_format_2_changelog_goes_on_exactly_as_before(
    ops: list[tuple[str, int, int, int]],
) -> None:
    """Round trip through the worker's own table: every committed value encodes, decodes to the
    same fields, and a correlator rebuilt from the decoded table emits what the original does."""
    clock = FakeClock(T0)
    live = changelog_tables()["incidents"]
    c = correlator(live)
    run_ops(c, ops[: len(ops) // 2], clock, 0)
    written = commit(live, range(2))
    restored_table = changelog_tables()["incidents"]
    restore(restored_table, written)
    assert set(restored_table) == set(live)
    for key, state in restored_table.items():
        assert state == Incident([*live[key][:KEY], None, *live[key][KEY + 1 :]])
    restored = correlator(restored_table)
    restored.rebuild(restored_table.items())
    assert dict(restored_table) == dict(live)
    assert restored.open_by_type == +c.open_by_type
    twin_clock = FakeClock(clock())
    tail = run_ops(c, ops[len(ops) // 2 :], clock, 100)
    assert run_ops(restored, ops[len(ops) // 2 :], twin_clock, 100) == tail


def test_a_changelog_value_of_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format 3"):
        decode(b'[3, 0.0, 1, 0, "open"]')


def test_re_notifications_do_not_grow_the_timer_heap_without_end() -> None:
    """Each re-notification supersedes the incident's heap entry; superseded entries beyond the
    live ones are dropped, and the timers still fire as before."""
    clock = FakeClock(T0)
    c = correlator()
    for seq in range(1000):
        clock.advance(1)
        c.on_event(note("start", clock, corr="busy", seq=seq), 0)
    assert len(c._timers[0]) <= 2 * 64 + 2
    expired = c.tick(clock() + 3600, 0)
    assert [(r.state, r.version, r.renotify_count) for r in expired] == [("expired", 1001, 999)]
