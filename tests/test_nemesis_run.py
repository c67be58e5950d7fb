"""The nemesis end to end (`make nemesis-ci`, run by CI): a few fixed seeds pass the checker,
and the same run on a build with deduplication turned off fails it. The second is the
checker's own test on a real history: a checker that passed everything would pass the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nemesis.run import Outcome, run_once

pytestmark = pytest.mark.nemesis

# Seeds drawn once and kept, so that a failure in CI is a regression that reruns as it failed
# (`make nemesis SEED=n RUNS=1 DURATION=120`); `make nemesis` draws fresh seeds.
CI_SEEDS = (1, 2, 3)
CI_DURATION = 120.0


def _report(outcome: Outcome) -> str:
    lines = [f"seed {outcome.seed}: logs in {outcome.folder}"]
    lines += [f"  {a.fault.describe()}" for a in outcome.faults]
    lines += [v.render() for v in outcome.violations]
    return "\n".join(lines)


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_a_seeded_schedule_of_faults_breaks_no_promise(seed: int, tmp_path: Path) -> None:
    outcome = run_once(seed, CI_DURATION, tmp_path / f"seed-{seed}")
    assert outcome.faults, "the schedule drew no fault"
    assert not outcome.violations, _report(outcome)


def test_the_checker_catches_a_worker_that_does_not_deduplicate(tmp_path: Path) -> None:
    """No faults: 30 s of the load, whose redeliveries a broken worker turns into events twice."""
    outcome = run_once(
        7, 30.0, tmp_path / "broken", faults=[], worker_module="tests.nemesis.broken dedup"
    )
    repeated = [v for v in outcome.violations if v.check == "events_exactly_once"]
    assert any("event ids repeated" in v.detail for v in repeated), _report(outcome)
