"""The charts of docs/performance.md, drawn from results.json: the goals, the ingest's
throughput by server, the end-to-end tail second by second. SVG, the same bytes for the same
results (tools/plots.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tools.plots import GREY, MET, MISSED, SERIES, save, style

_TARGET = re.compile(r"^(>=|<=|<|>)\s*([0-9.]+)$")


def goal_score(value: Any, target: str) -> float | None:
    """How a measured value stands against its target, as one number: 1 is exactly on it and
    above 1 is met, whichever way the target points. None when either is not a number."""
    found = _TARGET.match(target)
    if found is None or isinstance(value, bool) or not isinstance(value, int | float) or not value:
        return None
    limit = float(found[2])
    return float(value) / limit if found[1] in (">=", ">") else limit / float(value)


def draw(results: dict[str, Any], targets: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Draw every chart the results have data for into `folder`; returns the files."""
    with style():
        drawn = [_goals(targets, folder / "bench-goals.svg")]
        ingest = results.get("sections", {}).get("ingest")
        if ingest and "error" not in ingest:
            drawn.append(_ingest(ingest, folder / "bench-ingest.svg"))
        e2e = results.get("sections", {}).get("e2e")
        if e2e and "error" not in e2e:
            drawn.append(_e2e(e2e, folder / "bench-e2e.svg"))
    return [path for path in drawn if path is not None]


def _goals(targets: list[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    scored = [(t, goal_score(t["value"], t["target"])) for t in targets]
    shown = [(t, s) for t, s in scored if s is not None]
    if not shown:
        return None
    shown.reverse()  # the first goal at the top
    figure, axes = plt.subplots(figsize=(7.6, 0.26 * len(shown) + 0.9))
    labels = [f"{t['name']}  ({_short(t['value'])}, target {t['target']})" for t, _ in shown]
    scores = [s for _, s in shown]
    colours = [GREY if t["met"] is None else MET if t["met"] else MISSED for t, _ in shown]
    axes.barh(range(len(shown)), scores, color=colours, height=0.6)
    axes.axvline(1.0, color="#333333", lw=0.9)
    axes.set_yticks(range(len(shown)), labels, fontsize=7)
    axes.set_xlim(0, max(2.0, max(scores) * 1.05))
    axes.set_xlabel("measured / target (1 = on target; right of the line: met)")
    axes.grid(axis="y", visible=False)
    return save(figure, path)


def _short(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, float) and value >= 10 else f"{value:.2f}"


def _ingest(ingest: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    entries = ingest["by_workers"]
    servers = [name for name in _contenders() if any(name in e for e in entries)]
    figure, axes = plt.subplots(figsize=(7.2, 2.8))
    width = 0.8 / len(servers)
    for i, name in enumerate(servers):
        xs = [n + (i - (len(servers) - 1) / 2) * width for n in range(len(entries))]
        ys = [e[name]["ok_rps"] if name in e else 0 for e in entries]
        axes.bar(xs, ys, width=width * 0.92, color=SERIES[i % len(SERIES)], label=name)
    axes.set_xticks(range(len(entries)), [f"{e['workers']} process(es)" for e in entries])
    axes.set_ylabel("requests/s (2xx), median of runs")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:,.0f}"))
    axes.grid(axis="x", visible=False)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=len(servers), fontsize=7)
    return save(figure, path)


def _contenders() -> tuple[str, ...]:
    from tests.bench.ingest_bench import CONTENDERS

    return CONTENDERS


def _e2e(e2e: dict[str, Any], path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_mode = e2e.get("by_mode") or {e2e.get("mode", "partition"): e2e}
    series = {m: p["max_ms_by_second"] for m, p in by_mode.items() if p.get("max_ms_by_second")}
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7.2, 2.6))
    for i, (mode, worst) in enumerate(series.items()):
        rate = by_mode[mode]["rate"]
        axes.plot(
            range(len(worst)),
            worst,
            marker="o",
            ms=3,
            color=SERIES[i],
            label=f"CFN_TRANSACTIONS={mode}, {rate:,.0f} POST/s",
        )
    axes.axhline(300, color=MISSED, lw=0.9, ls=":", label="the p99 goal, 300 ms")
    axes.set_ylim(bottom=0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("second of sending (the run with the median p99)")
    axes.set_ylabel("worst 202 -> incident, ms")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=3, fontsize=7)
    return save(figure, path)
