"""`python -m tests.nemesis.report [--doc PAGE] [--keep] [--min-duration S] [FOLDER ...]`: the
nemesis runs kept under .local/nemesis/ (each run's outcome.json) and those kept in the
repository (tests/nemesis/runs/), summed up per fault kind. With --doc, the summary replaces
what stands between the markers in that file; otherwise it is printed. With --keep, the runs
under .local/nemesis/ are copied into tests/nemesis/runs/ first, so that the page's figures
stay reproducible from the repository."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- nemesis-report:begin -->", "<!-- nemesis-report:end -->"
ROOT = Path(__file__).resolve().parents[2] / ".local" / "nemesis"
KEPT = Path(__file__).resolve().parent / "runs"


def load(folders: list[Path]) -> list[dict[str, Any]]:
    outcomes = []
    for folder in folders:
        path = folder / "outcome.json"
        if path.exists():
            outcomes.append(json.loads(path.read_text()))
    return outcomes


def keep(folders: list[Path], kept: Path = KEPT) -> None:
    """Copy each run's outcome.json to kept/<run folder's name>.json."""
    kept.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        path = folder / "outcome.json"
        if path.exists():
            (kept / f"{folder.name}.json").write_bytes(path.read_bytes())


def load_all(local: Path = ROOT, kept: Path = KEPT) -> list[dict[str, Any]]:
    """The runs kept in the repository and under .local/nemesis/, one per run folder name, in
    the order of their names (seed, then the time it started)."""
    by_name = {p.stem: p for p in kept.glob("seed-*.json")}
    by_name.update(
        {p.name: p / "outcome.json" for p in local.glob("seed-*") if (p / "outcome.json").exists()}
    )
    return [json.loads(by_name[name].read_text()) for name in sorted(by_name, key=_run_order)]


def _run_order(name: str) -> tuple[int, str]:
    _, seed, started = name.split("-", 2)
    return int(seed), started


def render(outcomes: list[dict[str, Any]]) -> str:
    """Markdown: the runs (seeds, lengths, violations) and a table per fault kind. A seed run
    again (after a fix) counts by its last run, in the order given; the earlier runs that
    found violations are named."""
    latest: dict[tuple[int, float], dict[str, Any]] = {}
    superseded: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.get("worker", "cfn worker") != "cfn worker":
            continue
        key = (outcome["seed"], outcome["duration"])
        if key in latest:
            superseded.append(latest[key])
        latest[key] = outcome
    runs = list(latest.values())
    if not runs:
        return "No nemesis runs recorded yet (`make nemesis`)."
    seeds = sorted(o["seed"] for o in runs)
    violated = sorted(o["seed"] for o in runs if o["violations"])
    lengths = sorted({int(o["duration"]) for o in runs})
    lines = [
        f"{len(runs)} runs (seeds {', '.join(map(str, seeds))}) of "
        f"{' or '.join(f'{n} s' for n in lengths)} of load each: "
        + (f"violations in seeds {violated}." if violated else "**0 violations**."),
    ]
    earlier = sorted(o["seed"] for o in superseded if o["violations"])
    if earlier:
        lines.append(
            f"Earlier runs of seeds {earlier} found violations, fixed before their last run "
            "(below)."
        )
    lines += [
        "",
        "| Fault | Drawn | Longest gap without a 202 during it (s) "
        "| First 202 after its heal (s): median / max |",
        "|---|---|---|---|",
    ]
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for outcome in runs:
        for fault in outcome["faults"]:
            by_kind[fault["kind"]].append(fault)
    for kind, faults in sorted(by_kind.items()):
        gap = max(f["gap_without_202_s"] for f in faults)
        back = [f["first_202_after_heal_s"] for f in faults]
        known = [b for b in back if b is not None]
        never = len(back) - len(known)
        recovery = f"{statistics.median(known):.1f} / {max(known):.1f}" if known else "-"
        if never:
            recovery += f" ({never} with no 202 after it)"
        lines.append(f"| {kind} | {len(faults)} | {gap:.1f} | {recovery} |")
    lines += [
        "",
        "Faults overlap, so a gap counts for every fault it overlaps. A fault healed after the "
        "load's last 202 has no first 202 after it.",
    ]
    return "\n".join(lines)


def write_doc(doc: Path, text: str) -> None:
    page = doc.read_text()
    start, stop = page.index(BEGIN) + len(BEGIN), page.index(END)
    doc.write_text(page[:start] + "\n" + text + "\n" + page[stop:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--doc", type=Path, help="write the summary into this page")
    parser.add_argument(
        "--min-duration", type=float, default=0.0, help="leave out runs with less load (s)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="copy the runs under .local/nemesis/ into " + str(KEPT)
    )
    parser.add_argument("folders", nargs="*", type=Path, help="run folders (default: all kept)")
    args = parser.parse_args()
    if args.keep:
        keep(sorted(p for p in ROOT.glob("seed-*") if p.is_dir()))
    outcomes = load(args.folders) if args.folders else load_all()
    text = render([o for o in outcomes if o["duration"] >= args.min_duration])
    if args.doc:
        write_doc(args.doc, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
