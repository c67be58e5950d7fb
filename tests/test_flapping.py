"""processors.flapping: entering after N openings in the window, staying, leaving after the
quiet time (hysteresis), event-time order whatever the arrival order, restart from the table;
and the pipeline's round trip: openings repartitioned by flap key, marks back to the incidents."""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.partition import partition_for
from cfn.processors.driver import Driver, Raw
from cfn.processors.flapping import (
    FlapDetector,
    FlapPolicy,
    FlapResult,
    flap_key,
)
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio
from tests.payloads import alert, encode

POLICY = FlapPolicy(min_cycles=4, window_s=3600, quiet_s=1800)
KEY = ["default", "acc1", "pol1", "load_balancing_health_alert"]
T0 = 1_700_000_000


def feed(d: FlapDetector, openings: list[tuple[int, str]], key: list[str] = KEY) -> None:
    for ts, incident in openings:
        d.enqueue(key, ts, incident, f"corr-{incident}", 3, 0)


def states(result: FlapResult) -> list[tuple[str, int, int | None]]:
    return [(r.state, r.cycles, r.ended_at) for r in result.records]


def test_four_openings_in_the_hour_start_an_episode_and_mark_its_cycles() -> None:
    d = FlapDetector({}, POLICY)
    feed(d, [(T0, "in_a"), (T0 + 600, "in_b"), (T0 + 1200, "in_c")])
    assert d.advance(0, T0 + 2000).records == []
    feed(d, [(T0 + 1800, "in_d")])
    result = d.advance(0, T0 + 2000)
    assert states(result) == [("start", 4, None)]
    start = result.records[0]
    assert start.flap_id.startswith("fl_") and start.started_at == T0 + 1800
    assert (start.first_incident_id, start.last_incident_id) == ("in_a", "in_d")
    assert [(m.incident_id, m.flap_id, m.partition) for m in result.marks] == [
        (i, start.flap_id, 3) for i in ("in_a", "in_b", "in_c", "in_d")
    ]
    assert d.open_by_type == {"load_balancing_health_alert": 1}

    feed(d, [(T0 + 3000, "in_e")])  # during the episode: one more cycle, marked
    more = d.advance(0, T0 + 3100)
    assert more.records == [] and [m.incident_id for m in more.marks] == ["in_e"]

    # quiet for 30 minutes after the last opening: it ends, at that time, once the clock is there
    assert d.advance(0, T0 + 3000 + 1799).records == []
    ended = d.advance(0, T0 + 3000 + 1800)
    assert states(ended) == [("end", 5, T0 + 4800)]
    assert ended.records[0].flap_id == start.flap_id
    assert d.open_by_type == {"load_balancing_health_alert": 0}


def test_openings_spread_wider_than_the_window_never_flap() -> None:
    d = FlapDetector({}, POLICY)
    feed(d, [(T0 + i * 1300, f"in_{i}") for i in range(20)])  # 3 per hour at most
    assert d.advance(0, T0 + 100_000).records == []


def test_hysteresis_a_new_episode_needs_fresh_openings_after_the_end() -> None:
    d = FlapDetector({}, POLICY)
    feed(d, [(T0 + i * 60, f"in_{i}") for i in range(4)])
    assert states(d.advance(0, T0 + 300)) == [("start", 4, None)]
    # ends at T0+180+1800; one opening 10 s after: not a new episode on its own, although
    # the old openings are still inside the hour
    feed(d, [(T0 + 1990, "in_x")])
    assert states(d.advance(0, T0 + 2000)) == [("end", 4, T0 + 1980)]
    feed(d, [(T0 + 2000 + i, f"in_y{i}") for i in range(3)])
    assert states(d.advance(0, T0 + 2100)) == [("start", 4, None)]


def test_keys_are_independent_and_forgotten_when_idle() -> None:
    store: dict[str, Any] = {}
    d = FlapDetector(store, POLICY)
    other = ["default", "acc2", "pol1", "load_balancing_health_alert"]
    feed(d, [(T0 + i, f"in_{i}") for i in range(3)])
    feed(d, [(T0 + 10 + i, f"in_o{i}") for i in range(3)], other)
    assert d.advance(0, T0 + 100).records == []  # 3 + 3, never 4 of one key
    assert set(store) == {flap_key(*KEY), flap_key(*other)}
    d.advance(0, T0 + 10 + 2 + 3600)
    assert store == {}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 3 * 3600), min_size=1, max_size=25), st.randoms())
def test_arrival_order_and_clock_steps_do_not_change_the_episodes(
    times: list[int], rng: random.Random
) -> None:
    """Openings arrive from many raw partitions, interleaved differently in every run: judged
    in event-time order once the clock passed them, the episodes are the same."""
    openings = [(T0 + t, f"in_{i:03d}") for i, t in enumerate(times)]
    once = FlapDetector({}, POLICY)
    feed(once, sorted(openings))
    expected = once.advance(0, T0 + 10 * 3600)

    shuffled = openings[:]
    rng.shuffle(shuffled)
    live = FlapDetector({}, POLICY)
    got = FlapResult()
    for n, (ts, incident) in enumerate(shuffled):
        feed(live, [(ts, incident)])
        # the clock (watermark minus lateness) never passes an opening still to come
        to_come = [t for t, _ in shuffled[n + 1 :]]
        step = live.advance(0, min(to_come) - 1 if to_come else T0 + 10 * 3600)
        got.records += step.records
        got.marks += step.marks
    final = live.advance(0, T0 + 10 * 3600)
    got.records += final.records
    got.marks += final.marks
    assert got.records == expected.records
    assert sorted((m.incident_id, m.flap_id) for m in got.marks) == sorted(
        (m.incident_id, m.flap_id) for m in expected.marks
    )


def test_restart_from_the_table_alone_decides_the_same() -> None:
    openings = [(T0 + i * 300, f"in_{i}") for i in range(8)]
    whole = FlapDetector({}, POLICY)
    feed(whole, openings)
    expected = whole.advance(0, T0 + 10_000)

    store: dict[str, Any] = {}
    first = FlapDetector(store, POLICY)
    feed(first, openings[:5])
    part = first.advance(0, T0 + 3 * 300)  # 4 judged, one waiting
    restored = jsonio.loads(jsonio.dumps(store))
    second = FlapDetector(copy.deepcopy(restored), POLICY)
    second.rebuild(restored.items())
    assert second.open_by_type == {"load_balancing_health_alert": 1}
    feed(second, openings[5:])
    rest = second.advance(0, T0 + 10_000)
    assert part.records + rest.records == expected.records


# ---- the pipeline: openings out through the repartition topic, marks back --------------------


def test_the_pipeline_routes_openings_by_flap_key_and_marks_back_to_the_incident() -> None:
    settings_ = WorkerSettings(partitions=4, rate_lateness=60, rate_windows=(60,))
    driver = Driver.over_dicts(settings_, lambda: T0)
    raw_partition = {}
    for i in range(4):
        body = alert(account="acc1", correlation=f"flap-{i}", ts=T0 + i * 60, alert_type=KEY[3])
        body["policy_id"] = "pol1"
        p = i % 4
        driver.feed(Raw(encode(body), None, p, i, (T0 + i * 60) * 1000))
        raw_partition[f"flap-{i}"] = p
    openings = [o for o in driver.rate_inputs if b'"o":' in (o.value or b"")]  # not rate sums
    assert len(openings) == 4
    assert {o.key for o in openings} == {KEY[3].encode()}  # to the alert type's partition
    outputs = driver.read_rate_inputs()
    assert driver.rate_partitions == {partition_for(KEY[3].encode(), 4)}
    outputs += driver.close_rates(T0 + 10_000)
    flaps = [jsonio.loads(o.value) for o in outputs if o.role == "flaps" and o.value]
    assert [f["state"] for f in flaps] == ["start", "end"]
    marks = list(driver.marks)
    assert sorted(o.partition for o in marks if o.partition is not None) == sorted(
        raw_partition.values()
    )
    versions = [
        jsonio.loads(v.value) for v in driver.read_marks() if v.role == "incidents" and v.value
    ]
    assert len(versions) == 4
    assert {v["flap_id"] for v in versions} == {flaps[0]["flap_id"]}
    assert all(v["version"] == 2 and v["state"] == "open" for v in versions)
    assert driver.marks == [] and driver.rate_inputs == []
    # marked once: the same mark again adds no version
    driver.marks = marks[:1]
    assert driver.read_marks() == []
