"""tools/detection_plots.py: the charts of docs/detection.md come from the detector, say what
docs/detection.md says of each shape, are the same bytes on every run, and are all in the doc."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import detection_plots
from tools.detection_plots import SHAPES, judge

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "detection.md"


def _shape(name: str) -> list[int]:
    (shape,) = (s for s in SHAPES if s.name == name)
    return shape.counts()


def test_each_shape_gets_the_verdict_the_doc_gives_it() -> None:
    assert judge(_shape("ramp")).opened == []
    assert judge(_shape("daily-cycle")).opened == []
    spike = judge(_shape("spike"))
    assert (spike.opened, spike.closed) == ([30], [33])
    step = judge(_shape("step"))
    assert len(step.opened) == len(step.closed) == 1  # one anomaly, closed once caught up


def test_the_baseline_is_the_one_each_window_was_judged_against() -> None:
    spike = judge(_shape("spike"))
    assert spike.baselines[30] == 20.0  # the spike is judged against the calm level
    assert spike.thresholds[30] == 100.0 and spike.thresholds[5] is None  # warm-up: not judged
    assert spike.baselines[31] == pytest.approx(20 + 2 / 13 * (100 - 20))  # learned as 5x, clipped


def test_the_charts_are_the_same_bytes_every_run_and_all_in_the_doc(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="in the bench extra")
    assert detection_plots.main(["--out", str(tmp_path / "a")]) == 0
    assert detection_plots.main(["--out", str(tmp_path / "b")]) == 0
    drawn = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert drawn == [f"anomaly-{s.name}.png" for s in sorted(SHAPES, key=lambda s: s.name)]
    for name in drawn:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    shown = set(re.findall(r"\]\(img/([^)]+)\)", DOC.read_text()))
    committed = {p.name for p in (ROOT / "docs" / "img").glob("anomaly-*.png")}
    assert shown == committed == set(drawn)
