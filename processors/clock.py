"""The injected clock: production reads wall time, tests move a fake one by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float:
        """Epoch seconds."""
        ...


def wall_clock() -> float:
    return time.time()


class FakeClock:
    """A clock that only moves when told to; tests never sleep."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
