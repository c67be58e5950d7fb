"""What every section shares: sizes, progress on stderr, statistics, machine facts, the broker."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
SECRET = "bench-webhook-secret"
SECTIONS = ("ingest", "pipeline", "partitions", "e2e", "memory", "security")

# Latency is measured at this fraction of the slowest peak measured in the same invocation. The
# fixed-rate load generators are Python processes sharing the 2 cores with the broker and the
# servers: at half of the ingest's peak (6,200 req/s in one run) they and the bare baseline
# alike fell seconds behind, so half measured the machine, not the servers.
LOAD_FRACTION = 0.25

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr, stamped with the seconds since the bench started."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    """How big and how long each section runs; `quick()` and `full()` are the two presets."""

    quick: bool
    runs: int
    # ingest
    wrk_duration: float
    wrk_warmup: float
    wrk_connections: int = 64
    wrk_threads: int = 2
    ingest_workers: tuple[int, ...] = (1, 2)
    fixed_rate_duration: float = 8.0
    # pipeline
    pipeline_n: int = 200_000
    pipeline_box_s: float = 30.0  # a run stops at N records or after this long, if sooner
    profile_seconds: float = 20.0
    restore_keys: int = 200_000  # dedup ids in the restored state (plus a quarter as incidents)
    restore_runs: int = 1
    # partitions: the same records over 12 and over 96 partitions (a run stops at the box too)
    partitions_n: int = 200_000
    # end to end
    e2e_duration: float = 20.0
    # memory
    memory_keys: int = 1_000_000

    @classmethod
    def full(cls, runs: int = 3) -> Sizes:
        # A warm-up long enough for the broker's JIT: the first contender measured after a
        # short one was measurably slower than in later rounds.
        return cls(quick=False, runs=runs, wrk_duration=10.0, wrk_warmup=5.0)

    @classmethod
    def fast(cls, runs: int = 1) -> Sizes:
        """The --quick preset: one run, small sizes, short loads."""
        return cls(
            quick=True,
            runs=runs,
            wrk_duration=3.0,
            wrk_warmup=0.0,
            fixed_rate_duration=3.0,
            pipeline_n=20_000,
            partitions_n=10_000,
            pipeline_box_s=8.0,
            profile_seconds=5.0,
            restore_keys=20_000,
            restore_runs=0,  # ~30 s that --quick cannot afford; the full bench measures it
            e2e_duration=6.0,
            memory_keys=50_000,
        )


@dataclass
class Context:
    """One invocation: sizes, the broker, a scratch folder, and results as sections finish."""

    sizes: Sizes
    bootstrap: str
    tmp: Path
    results: dict[str, Any] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    """The median of the finite values; NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the values; NaN for an empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a missing measurement is null."""
    return value if math.isfinite(value) else None


# ---- processes -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn workers, multiprocessing children)."""
    out = [pid]
    frontier = [pid]
    while frontier:
        nxt: list[int] = []
        for p in frontier:
            nxt.extend(_children(p))
        out.extend(nxt)
        frontier = nxt
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds the given processes have used so far (gone ones count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory (VmRSS) of the given processes, summed (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for our own helper subprocesses: the repo importable, nothing CFN_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CFN_", "BENCH_"))}
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.update(extra or {})
    return env


# ---- the broker ------------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_broker(tmp: Path, existing: str | None = None) -> Iterator[str]:
    """Bootstrap address of a broker: `existing` as it is, or a LocalKafka we start and stop."""
    if existing:
        yield existing
        return
    from cfn.shell.broker import LocalKafka
    from tests.conftest import free_port_block

    broker = LocalKafka(data_dir=tmp / "kafka", port=free_port_block(1), heap="1g")
    progress("starting Kafka")
    started = time.monotonic()
    try:
        broker.start()
        progress(f"Kafka ready on {broker.bootstrap} in {time.monotonic() - started:.1f}s")
        yield broker.bootstrap
    finally:
        progress("stopping Kafka")
        broker.stop()


# ---- the machine -----------------------------------------------------------------------------


def _run_text(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]}: not installed"
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    return (result.stdout or result.stderr).rstrip()


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, load, and the software versions."""
    from importlib.metadata import version

    from cfn.shell.broker import KAFKA_VERSION

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model")
    ]
    model_names = [m for m in models if not m.isdigit()]
    packages = {}
    for name in (
        "faust-streaming",
        "aiokafka",
        "confluent-kafka",
        "uvicorn",
        "uvloop",
        "httptools",
        "orjson",
        "granian",
    ):
        try:
            packages[name] = version(name)
        except Exception:  # a missing package is a fact to report, not an error
            packages[name] = "not installed"
    java = _run_text(["java", "-version"]).splitlines()
    return {
        "cpu_model": model_names[0] if model_names else platform.processor() or "unknown",
        "nproc": _run_text(["nproc"]),
        "free_g": _run_text(["free", "-g"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else [],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION,
        "java": java[0] if java else "unknown",
        "wrk": _run_text(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "none",
        "packages": packages,
    }


def go_build(ctx: Context, source: Path) -> Path:
    """The binary of the Go program in `source` (a folder of tests/bench), built into the
    scratch folder; modules, if it has any, come from the Go proxy."""
    binary = ctx.tmp / source.name
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary
