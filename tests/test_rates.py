"""processors.rates: event-time windows, lateness corrections, drops, idle ticks, restart."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.processors.clock import FakeClock
from cfn.processors.rates import WATERMARK_PREFIX, RateCounter, RateResult, State
from cfn.schemas import jsonio
from cfn.schemas.records import RateRecord

WINDOWS = (60, 300)
LATENESS = 120
B = 1_699_999_800  # a multiple of both windows: window starts are B + k * window_s
TYPE = "advanced_ddos_attack_l7_alert"

Row = tuple[str, str | None, int, int, int, int]  # scope, account, window_s, start, count, rev


def counter(
    store: dict[str, State] | None = None,
    *,
    windows: tuple[int, ...] = WINDOWS,
    lateness_s: int = LATENESS,
    idle_after_s: float = 5.0,
    idle_delay_s: float = 5.0,
) -> RateCounter:
    return RateCounter(
        store={} if store is None else store,
        windows=windows,
        lateness_s=lateness_s,
        idle_after_s=idle_after_s,
        idle_delay_s=idle_delay_s,
    )


def rows(records: Iterable[RateRecord]) -> set[Row]:
    return {
        (r.scope, r.account_id, r.window_s, r.window_start, r.count, r.revision) for r in records
    }


def both_scopes(account: str | None, window_s: int, start: int, count: int, rev: int) -> set[Row]:
    return {
        ("type", None, window_s, start, count, rev),
        ("account_type", account, window_s, start, count, rev),
    }


def add(c: RateCounter, ts: int, *, account: str | None = "a1", partition: int = 0) -> RateResult:
    return c.add(TYPE, account, ts, partition, now=ts)


def windows_in(store: Mapping[str, State]) -> dict[str, dict[str, list[int]]]:
    return {k: dict(v["w"]) for k, v in store.items() if not k.startswith(WATERMARK_PREFIX)}


# ---- a scripted stream -----------------------------------------------------------------------

SCRIPT: list[tuple[int, set[Row]]] = [
    (B + 5, set()),
    (B + 30, set()),
    (B + 59, set()),
    # ts B+60 moves the watermark to B+60, the end of [B, B+60): 3 events in it.
    (B + 60, both_scopes("a1", 60, B, 3, 1)),
    (B + 61, set()),
    (B + 119, set()),
    # Watermark B+240 (quantised to 60): closes [B+60, B+120) with 60, 61, 119.
    (B + 299, both_scopes("a1", 60, B + 60, 3, 1)),
    # Watermark B+300: closes [B+240, B+300) (299) and the 5-minute [B, B+300) (7 events).
    (B + 300, both_scopes("a1", 60, B + 240, 1, 1) | both_scopes("a1", 300, B, 7, 1)),
    (B + 301, set()),
]


def run_script(c: RateCounter, upto: int | None = None) -> None:
    for ts, expected in SCRIPT[:upto]:
        result = add(c, ts)
        assert rows(result.records) == expected, ts
        assert result.dropped_late == {}


def test_scripted_counts_cross_window_boundaries_exactly() -> None:
    c = counter()
    run_script(c)
    assert c.tick(B + 301 + 4, 0) == []  # not idle yet
    final = c.tick(B + 10_000, 0)
    assert rows(final) == both_scopes("a1", 60, B + 300, 2, 1) | both_scopes(
        "a1", 300, B + 300, 2, 1
    )
    # Every window is past its lateness now: only the watermark remains.
    assert windows_in(c.store) == {}
    assert c.watermark(0) == B + 10_000 - 5 - (B + 10_000 - 5) % 60


def test_records_carry_their_window_and_rate() -> None:
    c = counter()
    run_script(c, 4)
    for r in add(c, B + 300).records:
        assert r.window_end == r.window_start + r.window_s
        assert r.alert_type == TYPE
        assert r.rate_per_min == round(r.count * 60 / r.window_s, 6)
        assert r.rate_id.startswith("rt_")


def test_late_event_within_lateness_corrects_the_emitted_window() -> None:
    c = counter()
    first = {r.scope: r for r in counter_records_for(B)}
    run_script(c, 4)  # [B, B+60) emitted with 3; watermark B+60
    late = add(c, B + 10)
    assert rows(late.records) == both_scopes("a1", 60, B, 4, 2)
    assert late.dropped_late == {}
    for r in late.records:
        assert r.rate_id == first[r.scope].rate_id
    again = add(c, B + 20)
    assert rows(again.records) == both_scopes("a1", 60, B, 5, 3)
    # Watermark B+240 closes [B+60, B+120), which holds only the scripted B+60.
    assert rows(add(c, B + 299).records) == both_scopes("a1", 60, B + 60, 1, 1)
    # The 5-minute window was not emitted yet: it counted the late events silently, and closes
    # with the 4 scripted events, the 2 late ones and B+299.
    assert rows(add(c, B + 300).records) == both_scopes("a1", 300, B, 7, 1) | both_scopes(
        "a1", 60, B + 240, 1, 1
    )


def counter_records_for(start: int) -> list[RateRecord]:
    """The first emission of [start, start+60) in a fresh run of the script."""
    c = counter()
    records: list[RateRecord] = []
    for ts, _ in SCRIPT[:4]:
        records += add(c, ts).records
    return [r for r in records if r.window_start == start and r.window_s == 60]


def test_event_beyond_lateness_is_dropped_and_changes_nothing() -> None:
    c = counter()
    run_script(c, 7)  # watermark B+240 >= B+60+120: [B, B+60) is final
    before = copy.deepcopy(windows_in(c.store))
    result = add(c, B + 10)
    assert result.records == []
    assert result.dropped_late == {60: 1}
    after = windows_in(c.store)
    assert {k: v.get(f"60:{B}") for k, v in after.items()} == {
        k: v.get(f"60:{B}") for k, v in before.items()
    }
    # The 5-minute window is still open to it: 7 scripted events + this one.
    assert rows(add(c, B + 300).records) >= both_scopes("a1", 300, B, 8, 1)


def test_event_beyond_lateness_of_every_window_leaves_the_store_untouched() -> None:
    c = counter()
    run_script(c)
    c.tick(B + 10_000, 0)
    before = copy.deepcopy(c.store)
    result = add(c, B + 10)
    assert result.records == []
    assert result.dropped_late == {60: 1, 300: 1}
    assert c.store == before


def test_rate_ids_are_deterministic_and_distinguish_windows() -> None:
    def emitted() -> list[RateRecord]:
        c = counter()
        out: list[RateRecord] = []
        for ts in (B + 1, B + 2):
            out += c.add(TYPE, "a1", ts, 0, ts).records
            out += c.add(TYPE, "a2", ts, 0, ts).records
            out += c.add("other_type", "a1", ts, 0, ts).records
        return out + c.add(TYPE, "a1", B + 300, 0, B + 300).records

    first, second = emitted(), emitted()
    assert first == second
    keys = {(r.scope, r.alert_type, r.account_id, r.window_s, r.window_start) for r in first}
    assert len(keys) == len(first)
    assert len({r.rate_id for r in first}) == len(first)


def test_per_account_scope_counts_each_account() -> None:
    c = counter()
    for i, account in enumerate(["a1", "a1", "a2", "a1", None, "a2"]):
        add(c, B + 1 + i, account=account)
    c.add("other_type", "a1", B + 7, 0, B + 7)
    closing = c.add("other_type", "a1", B + 60, 0, B + 60)
    counts = {
        (r.scope, r.alert_type, r.account_id): r.count
        for r in closing.records
        if r.window_s == 60 and r.window_start == B
    }
    assert counts == {
        ("type", TYPE, None): 6,
        ("account_type", TYPE, "a1"): 3,
        ("account_type", TYPE, "a2"): 2,
        ("account_type", TYPE, None): 1,
        ("type", "other_type", None): 1,
        ("account_type", "other_type", "a1"): 1,
    }


def test_account_scope_keeps_pairs_apart_when_values_contain_the_separator() -> None:
    """(alert_type, account_id) pairs are counted apart whatever characters they hold."""
    c = counter(windows=(60,), lateness_s=0)
    c.add("a|b", "c", B + 1, 0, B + 1)
    c.add("a", "b|c", B + 2, 0, B + 2)
    closing = c.add("z", None, B + 60, 0, B + 60)
    per_pair = {
        (r.alert_type, r.account_id): r.count
        for r in closing.records
        if r.scope == "account_type" and r.alert_type != "z"
    }
    assert per_pair == {("a|b", "c"): 1, ("a", "b|c"): 1}


# ---- idle partitions, quantisation, restart --------------------------------------------------


def test_tick_closes_windows_on_an_idle_partition() -> None:
    c = counter(idle_after_s=5.0, idle_delay_s=5.0)
    add(c, B + 10)
    assert c.tick(B + 14, 0) == []  # 4 s since the last event: not idle
    assert c.tick(B + 64, 0) == []  # wall B+59 is still inside [B, B+60)
    closed = c.tick(B + 65, 0)
    assert rows(closed) == both_scopes("a1", 60, B, 1, 1)
    assert c.watermark(0) == B + 60
    # Another partition: the first tick only starts its idle clock, and p0 is untouched.
    assert c.tick(B + 1_000, 1) == []
    assert c.tick(B + 1_005, 1) == []
    assert c.watermark(1) == B + 960
    assert c.watermark(0) == B + 60


def test_tick_is_quiet_while_events_flow() -> None:
    clock = FakeClock(B)
    c = counter()
    for _ in range(20):
        clock.advance(2)
        c.add(TYPE, "a1", int(clock()) - 100, 0, clock())
        assert c.tick(clock(), 0) == []


def test_watermark_is_quantised_down_and_never_closes_early() -> None:
    c = counter(windows=(60, 300), lateness_s=90)  # step = gcd(60, 300, 90) = 30
    assert c.step == 30
    add(c, B + 59)
    assert c.watermark(0) == B + 30
    assert rows(add(c, B + 59).records) == set()
    result = add(c, B + 60)  # exactly the end of [B, B+60)
    assert c.watermark(0) == B + 60
    assert rows(result.records) == both_scopes("a1", 60, B, 2, 1)


def test_rebuild_after_restart_continues_where_it_stopped() -> None:
    store: dict[str, State] = {}
    before = counter(store)
    run_script(before, 7)
    mark = before.watermark(0)
    del before  # the worker restarts; only the mapping survives

    after = counter(store)
    after.rebuild(store.items())
    assert after.watermark(0) == mark == B + 240
    late = add(after, B + 250)  # inside lateness of nothing emitted: [B+240, B+300) is open
    assert late.records == []
    dropped = add(after, B + 5)  # [B, B+60) was final before the restart
    assert dropped.dropped_late == {60: 1}
    for ts, expected in SCRIPT[7:]:
        result = add(after, ts)
        if ts == B + 300:  # the two extra events land in their windows
            expected = both_scopes("a1", 60, B + 240, 2, 1) | both_scopes("a1", 300, B, 9, 1)
        assert rows(result.records) == expected
    assert rows(after.tick(B + 10_000, 0)) == both_scopes("a1", 60, B + 300, 2, 1) | both_scopes(
        "a1", 300, B + 300, 2, 1
    )
    assert windows_in(store) == {}


def test_lateness_zero_emits_final_windows_and_drops_late_events() -> None:
    c = counter(windows=(60,), lateness_s=0)
    add(c, B + 1)
    assert rows(add(c, B + 60).records) == both_scopes("a1", 60, B, 1, 1)
    late = add(c, B + 2)
    assert late.records == [] and late.dropped_late == {60: 1}
    assert {tuple(jsonio.loads(k)) for k in windows_in(c.store)} == {
        ("type", TYPE),
        ("account_type", TYPE, "a1"),
    }
    assert all(f"60:{B}" not in w for w in windows_in(c.store).values())


# ---- a model of the documented rules ---------------------------------------------------------


@dataclass
class Model:
    """The docstring's rules, stated directly: windows as a dict, no heaps."""

    windows: tuple[int, ...]
    lateness: int
    step: int
    idle_after: float = 5.0
    idle_delay: float = 5.0
    marks: dict[int, int] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    cells: dict[tuple[str, str | None, str | None, int, int], list[int]] = field(
        default_factory=dict
    )
    partition_of: dict[tuple[str, str | None, str | None, int, int], int] = field(
        default_factory=dict
    )

    def add(
        self, alert_type: str, account: str | None, ts: int, partition: int, now: float
    ) -> tuple[set[Row], dict[int, int]]:
        self.last[partition] = now
        mark = self.marks.get(partition, 0)
        out: set[Row] = set()
        dropped: Counter[int] = Counter()
        for scope, acc in (("type", None), ("account_type", account)):
            for w in self.windows:
                start = ts - ts % w
                if start + w + self.lateness <= mark:
                    dropped[w] += scope == "type"
                    continue
                cell = (scope, alert_type, acc, w, start)
                self.partition_of[cell] = partition
                count, rev = self.cells.get(cell, [0, 0])
                count += 1
                if rev > 0 or start + w <= mark:
                    rev += 1
                    out.add((scope, acc, w, start, count, rev))
                self.cells[cell] = [count, rev]
        out |= self.advance(partition, ts)
        return out, {w: n for w, n in dropped.items() if n}

    def tick(self, now: float, partition: int) -> set[Row]:
        if partition not in self.last:
            self.last[partition] = now
            return set()
        if now - self.last[partition] < self.idle_after:
            return set()
        return self.advance(partition, int(now - self.idle_delay))

    def advance(self, partition: int, to: int) -> set[Row]:
        quantised = to - to % self.step
        if quantised <= self.marks.get(partition, 0):
            return set()
        self.marks[partition] = quantised
        out: set[Row] = set()
        for cell, (count, rev) in list(self.cells.items()):
            if self.partition_of[cell] != partition:
                continue
            scope, _type, acc, w, start = cell
            if rev == 0 and start + w <= quantised:
                self.cells[cell] = [count, 1]
                out.add((scope, acc, w, start, count, 1))
            if start + w + self.lateness <= quantised:
                del self.cells[cell]
        return out


CONFIGS = [((60, 300), 120), ((60,), 0), ((30, 90), 45), ((60, 300), 0)]

ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "tick", "restart"]),
        st.sampled_from(["t1", "t2"]),
        st.sampled_from(["a1", "a2", None]),
        st.integers(0, 90),  # wall seconds before this step
        st.integers(0, 400),  # how far the event's ts lags wall time
    ),
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONFIGS), ops)
def test_matches_the_model_through_restarts(
    config: tuple[tuple[int, ...], int], script: list[tuple[str, str, str | None, int, int]]
) -> None:
    windows, lateness = config
    c = counter(windows=windows, lateness_s=lateness)
    model = Model(windows, lateness, c.step)
    clock = FakeClock(B + 1000)
    high: dict[int, int] = {}  # the highest time each partition's watermark may reach
    for op, alert_type, account, step, lag in script:
        clock.advance(step)
        partition = 0 if alert_type == "t1" else 1  # rate input is keyed by type
        if op == "restart":
            store = copy.deepcopy(dict(c.store))
            c = counter(store, windows=windows, lateness_s=lateness)
            c.rebuild(store.items())
            model.last.clear()
            continue
        if op == "tick":
            for p in (0, 1):
                idle = p in model.last and clock() - model.last[p] >= model.idle_after
                if idle:  # an idle tick may move the watermark up to wall time - delay
                    high[p] = max(high.get(p, 0), int(clock() - model.idle_delay))
                emitted = c.tick(clock(), p)
                assert rows(emitted) == model.tick(clock(), p)
                check_never_early(emitted, high.get(p, 0))
            continue
        ts = int(clock()) - lag
        result = c.add(alert_type, account, ts, partition, clock())
        high[partition] = max(high.get(partition, 0), ts)
        expected, dropped = model.add(alert_type, account, ts, partition, clock())
        assert rows(result.records) == expected
        assert result.dropped_late == dropped
        check_never_early(result.records, high[partition])
        assert all(r.alert_type == alert_type for r in result.records)
    for p in (0, 1):
        assert c.watermark(p) == model.marks.get(p, 0)
        assert c.watermark(p) % c.step == 0


def check_never_early(records: Iterable[RateRecord], high: int) -> None:
    for r in records:
        assert r.window_end <= high, (r, high)


events = st.lists(
    st.tuples(st.sampled_from(["a1", "a2"]), st.integers(0, 900), st.integers(1, 4)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CONFIGS), events)
def test_quantised_ts_makes_the_same_decisions(
    config: tuple[tuple[int, ...], int], script: list[tuple[str, int, int]]
) -> None:
    """Why the pipeline may pre-sum rate inputs per ts rounded to `step`."""
    windows, lateness = config
    exact = counter(windows=windows, lateness_s=lateness)
    rounded = counter(windows=windows, lateness_s=lateness)
    for account, offset, _n in script:
        ts = B + offset
        a = exact.add(TYPE, account, ts, 0, ts)
        b = rounded.add(TYPE, account, rounded.quantise(ts), 0, ts)
        assert rows(a.records) == rows(b.records)
        assert a.dropped_late == b.dropped_late
    assert windows_in(exact.store) == windows_in(rounded.store)
    assert exact.watermark(0) == rounded.watermark(0)


@dataclass
class Tally:
    """What a counter emitted and dropped over a script, for comparing two ways of feeding it."""

    counter: RateCounter
    last: dict[tuple[str | None, int, int], int] = field(default_factory=dict)  # latest counts
    dropped: Counter[int] = field(default_factory=Counter)

    def add(self, account: str, ts: int, n: int) -> None:
        result = self.counter.add(TYPE, account, ts, 0, ts, n)
        self.dropped.update(result.dropped_late)
        self.last.update(
            {(r.account_id, r.window_s, r.window_start): r.count for r in result.records}
        )

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            k: {w: c for w, (c, _rev) in v.items()}
            for k, v in windows_in(self.counter.store).items()
        }


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CONFIGS), events)
def test_n_events_at_once_count_like_n_single_events(
    config: tuple[tuple[int, ...], int], script: list[tuple[str, int, int]]
) -> None:
    windows, lateness = config
    singles = Tally(counter(windows=windows, lateness_s=lateness))
    summed = Tally(counter(windows=windows, lateness_s=lateness))
    for account, offset, n in script:
        ts = summed.counter.quantise(B + offset)
        for _ in range(n):
            singles.add(account, ts, 1)
        summed.add(account, ts, n)
    counts, counts_summed = singles.counts(), summed.counts()
    last, last_summed = singles.last, summed.last
    dropped, dropped_summed = singles.dropped, summed.dropped
    assert counts == counts_summed  # the same counts; only the number of revisions differs
    assert last == last_summed  # every window's latest record carries the same count
    assert dropped == dropped_summed
