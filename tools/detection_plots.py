"""The rate-anomaly detector's test shapes as charts, with its alerts marked: docs/img/*.png.

Each shape is a series of final window counts fed to cfn's own detector
(`cfn.processors.anomaly.AnomalyDetector`, default policy), its window times passed in as the
worker and the tests pass them (`tests/test_anomaly.py` has the same shapes), so the charts show
what the code decides, not a drawing of it. The output is the same bytes on every run:

    python -m tools.detection_plots [--out docs/img]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cfn.processors.anomaly import AnomalyDetector, AnomalyPolicy, State
from tools.plots import MISSED, SERIES, save, style

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
POLICY = AnomalyPolicy()  # the defaults, as CFN_ANOMALY_* leave them
W = POLICY.window_s
START = 1_700_000_100 - 1_700_000_100 % W  # the first window's start (epoch s), as in the tests
KEY = '["account_type","http_alert_origin_error","acc1"]'


@dataclass(frozen=True)
class Shape:
    """A named series of window counts, and the file its chart goes to."""

    name: str
    title: str
    counts: Callable[[], list[int]]
    log: bool = False  # a logarithmic count axis


def _ramp() -> list[int]:
    return [round(10 * 1.05**i) for i in range(150)]  # +5% a window, 10 to over 10,000


def _daily_cycle() -> list[int]:
    per_day = 24 * 3600 // W
    return [round(50 + 40 * math.sin(2 * math.pi * i / per_day)) for i in range(per_day * 3)]


SHAPES = (
    Shape("ramp", "A slow ramp: +5% a window, from 10 to over 10,000", _ramp, log=True),
    Shape("daily-cycle", "A daily cycle: 10 to 90 a window, three days", _daily_cycle),
    Shape(
        "spike", "A spike: one window at 200 after 30 at 20", lambda: [20] * 30 + [200] + [20] * 10
    ),
    Shape("step", "A lasting step: from 20 to 200", lambda: [20] * 30 + [200] * 40),
)


@dataclass(frozen=True)
class Judged:
    """What the detector saw and decided for each window of a shape."""

    counts: list[int]
    baselines: list[float]  # the baseline each window was judged against
    thresholds: list[float | None]  # the count that opens an anomaly; None in the warm-up
    clear: list[float | None]  # the count at or below which a window is calm
    opened: list[int]  # windows that opened an anomaly
    closed: list[int]  # windows that closed one


def judge(counts: Sequence[int], policy: AnomalyPolicy = POLICY) -> Judged:
    """Feed `counts` (one a window, in order) to the detector, reading its baseline before each
    window as the changelog would hold it."""
    store: dict[str, State] = {}
    detector = AnomalyDetector(store, policy)
    baselines: list[float] = []
    thresholds: list[float | None] = []
    clear: list[float | None] = []
    opened: list[int] = []
    closed: list[int] = []
    for i, count in enumerate(counts):
        state = store.get(KEY)
        baseline = float(count) if state is None else float(state["b"])  # the first: itself
        reference = max(baseline, policy.floor)
        warm = i >= policy.warmup
        baselines.append(baseline)
        thresholds.append(max(policy.factor * reference, policy.min_count) if warm else None)
        clear.append(policy.clear_factor * reference if warm else None)
        for record in detector.observe(
            KEY, "http_alert_origin_error", "acc1", START + i * W, count, 0
        ):
            (opened if record.state == "open" else closed).append(
                (record.window_start - START) // W
            )
    return Judged(list(counts), baselines, thresholds, clear, opened, closed)


def verdict(judged: Judged) -> str:
    if not judged.opened:
        return "no anomaly"
    pairs = [
        f"opened at window {o}" + (f", closed at {c}" if c is not None else ", still open")
        for o, c in zip(judged.opened, [*judged.closed, None], strict=False)
    ]
    return "; ".join(pairs)


def draw(shape: Shape, out: Path) -> Path:
    import matplotlib.pyplot as plt

    judged = judge(shape.counts())
    hours = [i * W / 3600 for i in range(len(judged.counts))]
    figure, axes = plt.subplots(figsize=(7.2, 3.0))
    axes.plot(hours, judged.counts, drawstyle="steps-mid", color=SERIES[0], lw=1.2, label="count")
    axes.plot(hours, judged.baselines, color=SERIES[1], lw=1.2, ls="--", label="baseline (EWMA)")
    axes.plot(
        hours,
        [float("nan") if t is None else t for t in judged.thresholds],
        color=MISSED,
        lw=0.9,
        ls=":",
        label=f"opens at {POLICY.factor:g}x baseline",
    )
    axes.plot(
        hours,
        [float("nan") if c is None else c for c in judged.clear],
        color=SERIES[2],
        lw=0.9,
        ls=":",
        label=f"calm at or below {POLICY.clear_factor:g}x",
    )
    for o, c in zip(judged.opened, [*judged.closed, None], strict=False):
        end = hours[-1] if c is None else hours[c]
        axes.axvspan(hours[o], end, color=MISSED, alpha=0.12, lw=0)
        axes.plot(hours[o], judged.counts[o], "^", color=MISSED, ms=7, label="anomaly opened")
        if c is not None:
            axes.plot(hours[c], judged.counts[c], "v", color=SERIES[4], ms=7, label="closed")
    warmup_end = hours[min(POLICY.warmup, len(hours) - 1)]
    axes.axvspan(hours[0], warmup_end, color="#000000", alpha=0.05, lw=0, label="warm-up")
    if shape.log:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.set_xlim(hours[0], hours[-1])
    axes.set_xlabel(f"hours ({W // 60}-minute windows)")
    axes.set_ylabel("events per window")
    axes.set_title(f"{shape.title}: {verdict(judged)}", loc="left", fontsize=9)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncols=4)
    return save(figure, out / f"anomaly-{shape.name}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.detection_plots", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    with style():
        for shape in SHAPES:
            print(draw(shape, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
