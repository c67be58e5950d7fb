"""Section 1: `cfn ingest` against a bare handler on the same HTTP stack, with and without Kafka.

For each process count (1 and 2), these servers run side by side on one broker:

* cfn: `cfn ingest` with a secret set (auth, JSON parse, key, headers, metrics, acks=all);
* bare_kafka: tests/bench/bare_ingest.py, the same acks=all idempotent aiokafka send, nothing else;
* bare_http: the same handler without Kafka: the HTTP stack's own ceiling;
* go_peer: tests/bench/go_peer, what a user might write in Go instead: net/http, a SHA-256 check
  of the secret, a JSON-object check, franz-go producing with acks=all and idempotence, 202
  after the ack (one process, every core; built here with `go build`);
* go_keyed: the same Go peer keying each record as cfn keys `cfn.raw` (GO_PEER_KEY=incident: it
  decodes the body's fields for the key), so its records spread over the topic's 12 partitions
  as cfn's do. The goal is set against go_peer; go_keyed shows how much of the gap is the key;
* granian_cfn: cfn's own IngestApp, built as `cfn ingest` builds it, served by granian (RSGI:
  Rust, hyper) instead of cfn's HTTP/1.1 protocol (tests/bench/granian_ingest.py): the same work
  on another server, the measurement the HTTP server is chosen on;
* granian_kafka: beside bare_kafka, on granian: check the secret, read the body, the same
  unkeyed acks=all KafkaSink write, 202 after the ack (a slim app);
* granian_bare: granian's own ceiling beside bare_http: read the body of any POST, answer 202.

wrk loads each in turn at fixed concurrency, rounds interleaved and rotated; a ratio is the
median over rounds of that round's ratio. Then the fixed-rate client measures latency at a
quarter of cfn's peak (core.LOAD_FRACTION) against cfn and bare_kafka, alternating, as many runs
as rounds; each side's run with the median p99 is reported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cfn.config import topic_names
from cfn.schemas import jsonio
from tests.bench.core import (
    LOAD_FRACTION,
    SECRET,
    Context,
    bench_env,
    cpu_seconds,
    finite_or_none,
    go_build,
    median,
    progress,
    ratio,
    tree_pids,
)
from tests.bench.granian_ingest import argv as granian_argv
from tests.bench.load import WEBHOOK_PATH, WrkResult, lua_script, run_wrk, webhook_body
from tests.kafka_util import create_topics, run
from tests.services import Process, free_port, request, start_ingest, wait_ready

CONTENDERS = (
    "cfn",
    "bare_kafka",
    "bare_http",
    "go_peer",
    "go_keyed",
    "granian_cfn",
    "granian_kafka",
    "granian_bare",
)
BARE_TOPIC = "bench.bare-raw"
GO_TOPIC = "bench.go-raw"
GO_KEYED_TOPIC = "bench.go-keyed-raw"
GO_PEER = Path(__file__).parent / "go_peer"
GRANIAN_SLIM_TOPIC = "bench.granian-raw"
GRANIAN_PREFIX = "bench-granian."
GRANIAN_TOPIC = topic_names(GRANIAN_PREFIX)["raw"]  # what granian_cfn writes, keyed as cfn's


def _start_go(ctx: Context, binary: Path, keyed: bool) -> Process:
    port = free_port()
    process = Process(
        [str(binary)],
        bench_env(
            {
                "GO_PEER_PORT": str(port),
                "GO_PEER_BOOTSTRAP": ctx.bootstrap,
                "GO_PEER_TOPIC": GO_KEYED_TOPIC if keyed else GO_TOPIC,
                "GO_PEER_SECRET": SECRET,
                "GO_PEER_KEY": "incident" if keyed else "",
            }
        ),
        ctx.tmp / f"go-peer-{port}.log",
        port=port,
    )
    process.start()
    wait_ready(process, port, "/readyz")
    return process


def _start_bare(ctx: Context, workers: int, with_kafka: bool) -> Process:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "tests.bench.bare_ingest", "--workers", str(workers)],
        bench_env(
            {
                "BENCH_BARE_PORT": str(port),
                "BENCH_BARE_BOOTSTRAP": ctx.bootstrap if with_kafka else "",
                "BENCH_BARE_TOPIC": BARE_TOPIC,
            }
        ),
        ctx.tmp / f"bare-ingest-{port}.log",
        port=port,
    )
    process.start()
    wait_ready(process, port, "/readyz")
    return process


def _start_granian(ctx: Context, workers: int, mode: str) -> Process:
    """granian serving tests/bench/granian_ingest.py's app: `mode` cfn, kafka or bare."""
    port = free_port()
    process = Process(
        [sys.executable, *granian_argv(port, workers)],
        bench_env(
            {
                "CFN_KAFKA_BOOTSTRAP": ctx.bootstrap,
                "CFN_TOPIC_PREFIX": GRANIAN_PREFIX,
                "CFN_PARTITIONS": "12",
                "CFN_INGEST_SECRET": SECRET,
                "BENCH_GRANIAN_MODE": mode,
                "CFN_INGEST_ADMIN_PORT": "0",  # each granian worker's own, unused here
                "BENCH_GRANIAN_TOPIC": GRANIAN_SLIM_TOPIC,
            }
        ),
        ctx.tmp / f"granian-{port}.log",
        port=port,
    )
    process.start()
    wait_ready(process, port, "/readyz")
    return process


def _settled(process: Process, workers: int, times: int = 20) -> None:
    """/readyz 200 several times in a row from every process: each must have its producer.
    cfn's processes answer it on their admin ports (one each, from CFN_INGEST_ADMIN_PORT on);
    the other servers on the port they serve."""
    ports = (
        [process.admin_port + i for i in range(workers)] if process.admin_port else [process.port]
    )
    for port in ports:
        streak = 0
        deadline = time.monotonic() + 60
        while streak < times and time.monotonic() < deadline:
            try:
                ok = request(port, "GET", "/readyz").status == 200
            except OSError:  # that process has not bound its admin port yet
                ok = False
            streak = streak + 1 if ok else 0
            time.sleep(0.05)


def start_servers(ctx: Context, workers: int, go_binary: Path) -> dict[str, Process]:
    args = ("--workers", str(workers)) if workers > 1 else ()
    servers: dict[str, Process] = {}
    try:
        servers["cfn"] = start_ingest(
            ctx.tmp,
            ctx.bootstrap,
            "bench-ingest.",
            {"CFN_INGEST_SECRET": SECRET, "CFN_PARTITIONS": "12"},
            *args,
        )
        servers["bare_kafka"] = _start_bare(ctx, workers, with_kafka=True)
        servers["bare_http"] = _start_bare(ctx, workers, with_kafka=False)
        servers["go_peer"] = _start_go(ctx, go_binary, keyed=False)
        servers["go_keyed"] = _start_go(ctx, go_binary, keyed=True)
        servers["granian_cfn"] = _start_granian(ctx, workers, "cfn")
        servers["granian_kafka"] = _start_granian(ctx, workers, "kafka")
        servers["granian_bare"] = _start_granian(ctx, workers, "bare")
        for process in servers.values():
            _settled(process, workers)
    except BaseException:
        for process in servers.values():
            process.stop()
        raise
    return servers


def wrk_once(ctx: Context, process: Process, script: Path, duration: float) -> WrkResult:
    assert process.proc is not None
    pids = tree_pids(process.proc.pid)
    before = cpu_seconds(pids)
    result = run_wrk(
        f"http://127.0.0.1:{process.port}{WEBHOOK_PATH}",
        script,
        duration,
        ctx.sizes.wrk_connections,
        ctx.sizes.wrk_threads,
    )
    result.server_cpu_s = cpu_seconds(pids) - before
    return result


def fixed_rate(port: int, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """Run tests/bench/rate_client.py in its own process; its JSON answer."""
    argv = [
        sys.executable,
        "-m",
        "tests.bench.rate_client",
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        f"{rate:.1f}",
        str(seconds),
        "--connections",
        str(connections),
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=bench_env(), check=False, timeout=seconds + 120
    )
    if result.returncode != 0:
        raise RuntimeError(f"rate client failed:\n{result.stderr[-3000:]}")
    answer: dict[str, Any] = jsonio.loads(result.stdout.strip().splitlines()[-1])
    return answer


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median p99 (the lower middle one for an even count): one machine
    hiccup in a run moves a latency tail far more than a throughput figure."""
    ordered = sorted(runs, key=lambda run: float("inf") if run["p99_ms"] is None else run["p99_ms"])
    return dict(ordered[(len(ordered) - 1) // 2])


def _summary(rounds: list[dict[str, WrkResult]], name: str) -> dict[str, Any]:
    return {
        "ok_rps": finite_or_none(median([r[name].ok_rps for r in rounds])),
        "p50_ms": finite_or_none(median([r[name].p50_ms for r in rounds])),
        "p99_ms": finite_or_none(median([r[name].p99_ms for r in rounds])),
        "rps_per_cpu_s": finite_or_none(
            median(
                [ratio(r[name].requests - r[name].non_2xx, r[name].server_cpu_s) for r in rounds]
            )
        ),
        "non_2xx": sum(r[name].non_2xx for r in rounds),
        "socket_errors": sum(r[name].socket_errors for r in rounds),
    }


def _round_ratio(rounds: list[dict[str, WrkResult]], a: str, b: str) -> float | None:
    return finite_or_none(median([ratio(r[a].ok_rps, r[b].ok_rps) for r in rounds]))


def bench_workers(ctx: Context, workers: int, script: Path, go_binary: Path) -> dict[str, Any]:
    sizes = ctx.sizes
    progress(
        f"ingest[{workers}p]: starting cfn ingest, the two bare servers, the Go peers and granian"
    )
    servers = start_servers(ctx, workers, go_binary)
    try:
        if sizes.wrk_warmup > 0:
            for name in CONTENDERS:
                wrk_once(ctx, servers[name], script, sizes.wrk_warmup)
        rounds: list[dict[str, WrkResult]] = []
        for r in range(sizes.runs):
            shift = r % len(CONTENDERS)
            order = list(CONTENDERS[shift:] + CONTENDERS[:shift])
            round_result: dict[str, WrkResult] = {}
            for name in order:
                round_result[name] = wrk_once(ctx, servers[name], script, sizes.wrk_duration)
                got = round_result[name]
                progress(
                    f"ingest[{workers}p]: run {r + 1}/{sizes.runs} {name}: "
                    f"{got.ok_rps:.0f} req/s p50 {got.p50_ms:.1f} ms p99 {got.p99_ms:.1f} ms"
                    + (f" ({got.non_2xx} non-2xx)" if got.non_2xx else "")
                )
            rounds.append(round_result)
        peak = median([r["cfn"].ok_rps for r in rounds])
        rate = max(10.0, peak * LOAD_FRACTION)
        at_rate: dict[str, Any] = {"rate": rate, "fraction": LOAD_FRACTION}
        latency_runs: dict[str, list[dict[str, Any]]] = {"cfn": [], "bare_kafka": []}
        for r in range(sizes.runs):
            for name in ("cfn", "bare_kafka") if r % 2 == 0 else ("bare_kafka", "cfn"):
                progress(
                    f"ingest[{workers}p]: run {r + 1}/{sizes.runs} {name} at a fixed "
                    f"{rate:.0f} req/s ({LOAD_FRACTION:.0%} of cfn's peak)"
                )
                latency_runs[name].append(
                    fixed_rate(
                        servers[name].port, rate, sizes.fixed_rate_duration, sizes.wrk_connections
                    )
                )
        for name, runs in latency_runs.items():
            at_rate[name] = median_run(runs)
            at_rate[name]["p99_ms_runs"] = [run["p99_ms"] for run in runs]
        at_rate["ratio_p99_cfn_vs_bare_kafka"] = finite_or_none(
            ratio(at_rate["cfn"]["p99_ms"] or 0.0, at_rate["bare_kafka"]["p99_ms"] or 0.0)
        )
    finally:
        for process in servers.values():
            process.stop()
    return {
        "workers": workers,
        "runs": [{name: res.as_dict() for name, res in r.items()} for r in rounds],
        **{name: _summary(rounds, name) for name in CONTENDERS},
        "ratio_cfn_vs_bare_kafka": _round_ratio(rounds, "cfn", "bare_kafka"),
        "ratio_bare_kafka_vs_bare_http": _round_ratio(rounds, "bare_kafka", "bare_http"),
        "ratio_cfn_vs_go_peer": _round_ratio(rounds, "cfn", "go_peer"),
        "ratio_cfn_vs_go_keyed": _round_ratio(rounds, "cfn", "go_keyed"),
        "ratio_go_keyed_vs_go_peer": _round_ratio(rounds, "go_keyed", "go_peer"),
        "ratio_granian_cfn_vs_cfn": _round_ratio(rounds, "granian_cfn", "cfn"),
        "ratio_granian_kafka_vs_bare_kafka": _round_ratio(rounds, "granian_kafka", "bare_kafka"),
        "ratio_granian_kafka_vs_cfn": _round_ratio(rounds, "granian_kafka", "cfn"),
        "ratio_granian_bare_vs_bare_http": _round_ratio(rounds, "granian_bare", "bare_http"),
        "ratio_cfn_vs_go_peer_per_cpu": finite_or_none(
            median(
                [
                    ratio(
                        ratio(r["cfn"].requests - r["cfn"].non_2xx, r["cfn"].server_cpu_s),
                        ratio(
                            r["go_peer"].requests - r["go_peer"].non_2xx, r["go_peer"].server_cpu_s
                        ),
                    )
                    for r in rounds
                ]
            )
        ),
        "ratio_cfn_vs_bare_kafka_per_cpu": finite_or_none(
            median(
                [
                    ratio(
                        ratio(r["cfn"].requests - r["cfn"].non_2xx, r["cfn"].server_cpu_s),
                        ratio(
                            r["bare_kafka"].requests - r["bare_kafka"].non_2xx,
                            r["bare_kafka"].server_cpu_s,
                        ),
                    )
                    for r in rounds
                ]
            )
        ),
        "fixed_rate": at_rate,
    }


def run_ingest(ctx: Context) -> dict[str, Any]:
    topics = [BARE_TOPIC, GO_TOPIC, GO_KEYED_TOPIC, GRANIAN_SLIM_TOPIC]
    run(create_topics(ctx.bootstrap, topics, 12))
    script = lua_script(ctx.tmp / "post.lua")
    progress("ingest: building the Go peer (tests/bench/go_peer)")
    go_binary = go_build(ctx, GO_PEER)
    sizes = ctx.sizes
    return {
        "wrk": {
            "connections": sizes.wrk_connections,
            "threads": sizes.wrk_threads,
            "duration_s": sizes.wrk_duration,
            "body_bytes": len(webhook_body("bench-1-1")),
        },
        "by_workers": [bench_workers(ctx, w, script, go_binary) for w in sizes.ingest_workers],
    }
