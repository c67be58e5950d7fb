"""`python -m tests.nemesis.broken dedup`: `cfn worker` with one deliberate bug (every
redelivery counts as new), for the run that shows the checker catches a real fault
(tests/test_nemesis_run.py)."""

from __future__ import annotations

import sys

from cfn.processors.dedup import Deduplicator
from cfn.processors.worker import run


def _never_duplicate(self: Deduplicator, event_id: str, now: int, partition: int) -> bool:
    return False


BUGS = {"dedup": lambda: setattr(Deduplicator, "is_duplicate", _never_duplicate)}


def main() -> int:
    (bug,) = sys.argv[1:]
    BUGS[bug]()
    return run()


if __name__ == "__main__":
    sys.exit(main())
