"""Section 4: resident bytes per live dedup key and per open incident, without Kafka.

Each kind runs in a fresh subprocess (tests/bench/memory_probe.py) so that one's arenas do not
hide another's growth. dedup and correlate fill the worker's own ChangelogTables
(processors/changelog.py), drained as commits do; the plain dict is the baseline.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from cfn.schemas import jsonio
from tests.bench.core import Context, bench_env, finite_or_none, progress, ratio

TARGET_BYTES_PER_KEY = 400.0


def probe(kind: str, n: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.memory_probe", kind, str(n)],
        capture_output=True,
        text=True,
        env=bench_env(),
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {kind} failed:\n{result.stderr[-3000:]}")
    answer: dict[str, Any] = jsonio.loads(result.stdout.strip().splitlines()[-1])
    return answer


def run_memory(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.memory_keys
    out: dict[str, Any] = {"keys": n, "target_bytes_per_key": TARGET_BYTES_PER_KEY}
    for kind in ("dict", "dedup", "correlate"):
        progress(f"memory: {kind} with {n} keys")
        out[kind] = probe(kind, n)
        progress(f"memory:   {kind}: {out[kind]['bytes_per_key']:.0f} B/key")
    base = out["dict"]
    for kind in ("dedup", "correlate"):
        out[kind]["ratio_bytes_vs_dict"] = finite_or_none(
            ratio(out[kind]["bytes_per_key"], base["bytes_per_key"])
        )
        out[kind]["ratio_speed_vs_dict"] = finite_or_none(
            ratio(out[kind]["keys_per_s"], base["keys_per_s"])
        )
    return out
