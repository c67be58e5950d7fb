"""`python -m tests.nemesis [--seed N] [--runs N] [--duration S]` (what `make nemesis` runs).

Each run prints its seed and schedule first, then what happened and the checker's verdict; a
run is reproduced by its seed (the schedule and the load are drawn from it). Exit status 1 when
any run found a violation.
"""

from __future__ import annotations

import argparse
import random
import sys

from tests.nemesis.run import default_folder, run_once


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, help="the first run's seed (default: random)")
    parser.add_argument("--runs", type=int, default=1, help="runs, with seeds seed, seed+1, ...")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load per run")
    args = parser.parse_args()
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    failed: list[int] = []
    for seed in range(first, first + args.runs):
        outcome = run_once(seed, args.duration, default_folder(seed))
        print(f"nemesis: seed {seed} as applied (wall-clock offsets from the load's start):")
        for applied in outcome.faults:
            late = f" (error: {applied.error})" if applied.error else ""
            took = applied.healed - applied.started
            print(f"  {applied.fault.describe()}; healed after {took:.1f}s{late}")
        for name, value in outcome.figures:
            print(f"FIGURE nemesis.{name}: {value}")
        for violation in outcome.violations:
            print(violation.render())
        verdict = "OK" if not outcome.violations else f"{len(outcome.violations)} VIOLATIONS"
        print(f"nemesis: seed {seed}: checker {verdict} (logs in {outcome.folder})", flush=True)
        if outcome.violations:
            failed.append(seed)
    if failed:
        print(f"nemesis: violations with seeds {failed}; rerun one with --seed N", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
