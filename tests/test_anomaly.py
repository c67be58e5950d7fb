"""processors.anomaly: shapes that must and must not fire, hysteresis, gaps, forgetting, and the
same verdicts whichever way the windows arrive (all at once, or interleaved with watermarks)."""

from __future__ import annotations

import copy
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.processors.anomaly import AnomalyDetector, AnomalyPolicy, State
from cfn.schemas import jsonio
from cfn.schemas.records import AnomalyRecord

W = 300
POLICY = AnomalyPolicy(window_s=W)
B = 1_700_000_100 - 1_700_000_100 % W  # a window start
KEY = '["account_type","http_alert_origin_error","acc1"]'
LATENESS = 120


def detector(
    store: dict[str, State] | None = None, policy: AnomalyPolicy = POLICY
) -> AnomalyDetector:
    return AnomalyDetector({} if store is None else store, policy)


def run(counts: list[int], policy: AnomalyPolicy = POLICY) -> list[AnomalyRecord]:
    """Every window in order, zeros included as absent windows (as the rate counter gives
    them: an empty window is never final, it simply does not exist)."""
    d = detector(policy=policy)
    out: list[AnomalyRecord] = []
    for i, count in enumerate(counts):
        if count:
            out += d.observe(KEY, "http_alert_origin_error", "acc1", B + i * W, count, 0)
    return out


def test_steady_rate_with_noise_never_fires() -> None:
    rng = random.Random(7)
    counts = [max(0, round(rng.gauss(20, 5))) for _ in range(2000)]
    assert run(counts) == []


def test_slow_ramp_never_fires() -> None:
    counts = [round(10 * 1.05**i) for i in range(150)]  # x1500 over 150 windows
    assert counts[-1] > 10_000
    assert run(counts) == []


def test_daily_cycle_never_fires() -> None:
    per_day = 24 * 3600 // W
    counts = [round(50 + 40 * math.sin(2 * math.pi * i / per_day)) for i in range(per_day * 3)]
    assert min(counts) == 10 and max(counts) == 90
    assert run(counts) == []


def test_one_window_spike_opens_then_closes_after_calm_windows() -> None:
    counts = [20] * 30 + [200] + [20] * 10
    records = run(counts)
    assert [(r.state, r.window_start) for r in records] == [
        ("open", B + 30 * W),
        ("closed", B + 33 * W),
    ]
    opened, closed = records
    assert opened.anomaly_id == closed.anomaly_id and opened.anomaly_id.startswith("an_")
    assert opened.count == 200 and opened.baseline == 20.0 and opened.ratio == 10.0
    assert opened.threshold == 5.0 and closed.peak_count == 200 and closed.windows == 4


def test_small_counts_and_warmup_do_not_fire() -> None:
    # under CFN_ANOMALY_MIN_COUNT, however sharp
    assert run([1] * 30 + [9] + [1] * 5) == []
    # a new key's first burst, inside the warm-up
    assert run([5] * 5 + [500] + [5] * 5) == []
    # the same burst once warmed up does fire
    assert [r.state for r in run([5] * 12 + [500] + [5] * 5)] == ["open", "closed"]


def test_hysteresis_a_window_above_the_clear_level_restarts_the_calm_run() -> None:
    # enter at 5x, stay while above 1.5x: 20 -> 200, then 25 (calm), 60 (not calm), calm x3
    counts = [20] * 30 + [200, 25, 60, 20, 20, 20, 20]
    records = run(counts)
    assert [(r.state, (r.window_start - B) // W) for r in records] == [("open", 30), ("closed", 35)]
    assert records[1].windows == 6


def test_a_lasting_step_up_becomes_the_new_normal() -> None:
    counts = [20] * 30 + [200] * 40
    records = run(counts)
    assert [r.state for r in records] == ["open", "closed"]  # one episode, then normal
    assert records[1].window_start - records[0].window_start < 20 * W


def test_a_key_that_goes_quiet_closes_its_anomaly_on_the_watermark() -> None:
    d = detector()
    out = []
    for i in range(30):
        out += d.observe(KEY, "t", "acc1", B + i * W, 20, 0)
    out += d.observe(KEY, "t", "acc1", B + 30 * W, 300, 0)
    assert [r.state for r in out] == ["open"]
    assert d.open_count() == 1 and d.open_by_type() == {"t": 1}
    # windows 31..32 are final, not yet 33
    watermark = B + 33 * W + LATENESS
    assert d.advance(0, watermark, LATENESS) == []
    closed = d.advance(0, watermark + W, LATENESS)
    assert [(r.state, (r.window_start - B) // W, r.count) for r in closed] == [("closed", 33, 0)]
    assert d.open_count() == 0


def test_forgotten_after_a_long_quiet_and_deleted_by_the_watermark() -> None:
    store: dict[str, State] = {}
    d = detector(store)
    for i in range(20):
        d.observe(KEY, "t", "acc1", B + i * W, 20, 0)
    quiet_end = B + (19 + POLICY.forget_after + 1) * W  # the first window start afresh
    d.advance(0, quiet_end - W + LATENESS, LATENESS)
    assert KEY in store
    d.advance(0, quiet_end + W + LATENESS, LATENESS)
    assert KEY not in store
    # afresh: warm-up again, so a burst right after is not judged
    assert d.observe(KEY, "t", "acc1", quiet_end + W, 500, 0) == []


def test_restart_from_the_store_alone_decides_the_same() -> None:
    counts = [20] * 30 + [200] + [20] * 2 + [15] * 5
    whole = run(counts)
    store: dict[str, State] = {}
    first = detector(store)
    out = []
    for i, c in enumerate(counts[:32]):
        out += first.observe(KEY, "t", "acc1", B + i * W, c, 0)
    restored = jsonio.loads(jsonio.dumps(store))  # what the changelog holds
    second = detector(copy.deepcopy(restored))
    second.rebuild(restored.items())
    assert second.open_count() == 1
    for i, c in enumerate(counts[32:], 32):
        out += second.observe(KEY, "t", "acc1", B + i * W, c, 0)
    assert [(r.state, r.window_start) for r in out] == [(r.state, r.window_start) for r in whole]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([0, 0, 5, 20, 22, 25, 150, 400]), min_size=20, max_size=80),
    st.lists(st.integers(0, 79), max_size=30),
)
def test_watermarks_between_windows_change_no_verdict(counts: list[int], marks: list[int]) -> None:
    """Live, the watermark judges a quiet key's empty windows as it passes them; a replay sees
    only the windows with events and judges the gaps at the next one. Same records either way."""
    once = detector()
    expected = []
    for i, c in enumerate(counts):
        if c:
            expected += once.observe(KEY, "t", "acc1", B + i * W, c, 0)
    expected += once.advance(0, B + (len(counts) + 200) * W, LATENESS)

    live = detector()
    got = []
    for i, c in enumerate(counts):
        if i in marks:  # a watermark that finalised every window before i
            got += live.advance(0, B + i * W + LATENESS, LATENESS)
        if c:
            got += live.observe(KEY, "t", "acc1", B + i * W, c, 0)
    got += live.advance(0, B + (len(counts) + 200) * W, LATENESS)
    assert got == expected
