"""tests/bench/charts.py and the page the bench report writes: the charts come from
results.json, are the same bytes every time, and the page shows each one it draws."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cfn.schemas import jsonio
from tests.bench import report
from tests.bench.charts import goal_score

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "bench" / "results.json"


def test_a_goal_scores_one_on_its_target_and_more_when_met_whichever_way_it_points() -> None:
    assert goal_score(0.8, ">= 0.8") == 1.0
    assert goal_score(1.6, ">= 0.8") == 2.0
    assert goal_score(150.0, "<= 300") == 2.0  # half the allowed latency: twice as good
    assert goal_score(600, "< 300") == 0.5
    assert goal_score(True, "all keys") is None
    assert goal_score(None, ">= 0.9") is None
    assert goal_score(0.0, "<= 1.5") is None


def _images(page: str) -> set[str]:
    return set(re.findall(r"\]\(img/([^)]+)\)", page))


def test_the_page_and_its_charts_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="in the bench extra")
    results = jsonio.loads(RESULTS.read_bytes())
    pages = []
    for name in ("a", "b"):
        page = tmp_path / name / "performance.md"
        page.parent.mkdir()
        report.write_doc(results, page)
        pages.append(page)
    first, second = pages
    assert first.read_text() == second.read_text()
    shown = _images(first.read_text())
    assert shown == {"bench-goals.svg", "bench-ingest.svg", "bench-e2e.svg"}
    assert shown == {p.name for p in (first.parent / "img").iterdir()}
    for name in shown:
        assert (first.parent / "img" / name).read_bytes() == (
            second.parent / "img" / name
        ).read_bytes(), name


def test_the_committed_page_shows_only_committed_charts() -> None:
    page = (ROOT / "docs" / "performance.md").read_text()
    assert all((ROOT / "docs" / "img" / name).is_file() for name in _images(page))
