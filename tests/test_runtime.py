"""cfn.runtime.tune_gc, checked in a child process (it changes process-wide state)."""

from __future__ import annotations

import subprocess
import sys

from cfn.runtime import GC_THRESHOLDS


def test_tune_gc_raises_thresholds_and_freezes_what_exists() -> None:
    code = (
        "import gc\n"
        "from cfn.runtime import tune_gc\n"
        "tune_gc()\n"
        "print(*gc.get_threshold(), gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert tuple(int(x) for x in out[:3]) == GC_THRESHOLDS
    assert out[3] == "True"
