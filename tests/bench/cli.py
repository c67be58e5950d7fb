"""`python -m tests.bench`: run the sections, write results.json and results.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.bench import report
from tests.bench.core import BENCH_DIR, SECTIONS, Context, Sizes, kafka_broker, machine, progress


def _runner(section: str, e2e_rate: float | None) -> Callable[[Context], dict[str, Any]]:
    if section == "ingest":
        from tests.bench.ingest_bench import run_ingest

        return run_ingest
    if section == "pipeline":
        from tests.bench.pipeline_bench import run_pipeline

        return run_pipeline
    if section == "partitions":
        from tests.bench.partitions_bench import run_partitions

        return run_partitions
    if section == "e2e":
        from tests.bench.e2e_bench import run_e2e

        return lambda ctx: run_e2e(ctx, e2e_rate)
    if section == "security":
        from tests.bench.security_bench import run_security

        return run_security
    from tests.bench.memory_bench import run_memory

    return run_memory


@contextlib.contextmanager
def _maybe_broker(tmp: Path, sections: Sequence[str], existing: str | None) -> Iterator[str]:
    if all(s in ("memory", "security") for s in sections):  # these bring their own or none
        yield ""
        return
    with kafka_broker(tmp, existing) as bootstrap:
        yield bootstrap


def run_bench(
    sizes: Sizes,
    sections: Sequence[str],
    *,
    out_dir: Path,
    command: str,
    bootstrap: str | None = None,
    e2e_rate: float | None = None,
    note: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run `sections` in order and write the results; returns what was written.

    A section that fails is recorded with its error and the others still run.
    """
    started = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = machine()
    tmp = Path(tempfile.mkdtemp(prefix="cfn-bench-"))
    failed = False
    ctx = Context(sizes, "", tmp)
    try:
        with _maybe_broker(tmp, sections, bootstrap) as address:
            ctx.bootstrap = address
            for section in sections:
                progress(f"== {section} ==")
                try:
                    ctx.results[section] = _runner(section, e2e_rate)(ctx)
                except Exception as exc:  # record it, go on with the other sections
                    failed = True
                    progress(f"{section} FAILED: {type(exc).__name__}: {exc}")
                    ctx.results[section] = {
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                    }
    finally:
        if failed or keep:
            progress(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results: dict[str, Any] = {
        "command": command,
        "quick": sizes.quick,
        "runs": sizes.runs,
        "sizes": {k: v for k, v in vars(sizes).items()},
        "date": date,
        "duration_s": time.monotonic() - started,
        "machine": facts,
        "note": note,
        "sections": ctx.results,
    }
    json_path, md_path = report.write(results, out_dir)
    progress(f"wrote {json_path} and {md_path} in {results['duration_s']:.0f}s")
    return results


def parse_sections(text: str | None) -> list[str]:
    if not text:
        return list(SECTIONS)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; use {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Same-run ratio benchmarks of cfn; progress on stderr, results in "
        "tests/bench/results.json and results.md.",
    )
    parser.add_argument("--quick", action="store_true", help="one run, small sizes (< 3 min)")
    parser.add_argument(
        "--only", metavar="SECTION[,SECTION]", help=f"run only these: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3; --quick 1)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where to write the results")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    parser.add_argument("--e2e-rate", type=float, help="POST/s for the end-to-end section")
    parser.add_argument("--note", help="a line to print above the results table")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    parser.add_argument("--doc", type=Path, help="also write the results page here (make bench)")
    args = parser.parse_args(argv)
    try:
        sections = parse_sections(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    sizes = Sizes.fast(args.runs or 1) if args.quick else Sizes.full(args.runs or 3)
    given = list(sys.argv[1:] if argv is None else argv)
    shown = [
        a
        for i, a in enumerate(given)
        if not a.startswith("--note") and not (i > 0 and given[i - 1] == "--note")
    ]
    command = " ".join(["python -m tests.bench", *shown])  # --note is shown on its own
    results = run_bench(
        sizes,
        sections,
        out_dir=args.out,
        command=command,
        bootstrap=args.bootstrap,
        e2e_rate=args.e2e_rate,
        note=args.note,
        keep=args.keep,
    )
    if args.doc is not None:
        report.write_doc(results, args.doc)
    return 1 if any("error" in s for s in results["sections"].values()) else 0
