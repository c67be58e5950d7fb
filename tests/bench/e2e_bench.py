"""Section 3: webhook to incident record latency through `cfn ingest` and one `cfn worker`.

START/END pairs are POSTed at a fixed rate (END right after its START's 202) by
tests/bench/e2e_sender, a Go program in its own process; a read_committed consumer of
`cfn.incidents`, in this one, notes when each incident version appears (wall-clock times on one
machine). The sender was Python before: in this process's event loop at ~2,900 POST/s its own
lag counted as latency (from the send, p50 500 ms, where the ingest answers in a p99 of 5 ms at
that rate), and in a process of its own it still took about one of the two cores and stamped
its times late (from the send, p99 8 s).
Latency of the `open` record = seen - the START's 202, of the `resolved` record = seen - the
END's 202 (also reported from the moment the POST was sent). The rate is a quarter
(core.LOAD_FRACTION) of the slower of cfn's ingest peak and one worker's events/s, both measured
earlier in the same invocation: the sender, the ingest, the worker and the broker share the
machine. Tail latency on 2 shared cores moves a lot between runs, so the chosen rate is run
`runs` times (3 in full mode) and the run with the median p99 is reported, with every run's p99
beside it.
Both owners of the worker's transactions (CFN_TRANSACTIONS) are measured, each with its own
worker and ingest, their runs alternating: one producer per worker (the default) commits a
round as one transaction, a producer per partition as one transaction per busy partition.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from cfn.config import TRANSACTIONS
from cfn.schemas import jsonio
from tests.bench.core import (
    LOAD_FRACTION,
    SECRET,
    Context,
    finite_or_none,
    go_build,
    percentile,
    progress,
)
from tests.bench.ingest_bench import median_run
from tests.bench.load import WEBHOOK_PATH, webhook_body
from tests.services import Process, metric_value, start_ingest, start_worker

FALLBACK_RATE = 200.0
WARMUP_S = 3.0
SENDER = Path(__file__).parent / "e2e_sender"
CONNECTIONS = 64
EVENTS = ("ALERT_STATE_EVENT_START", "ALERT_STATE_EVENT_END")
# Stands for the body's `ts` in the templates; the sender writes the second of each send there.
# Fixed times (all STARTs of a run at one second, well in the past) made the worker's event-time
# watermark jump between runs, and every opening of the earlier run was judged by the flap
# detector in one step: about 3 s in which the worker did nothing else (docs/performance.md).
TS_MARK = 1_111_111_111
COMMIT_METRIC = "cfn_worker_commit_duration_seconds"


def commit_totals(port: int) -> tuple[float, float]:
    """The worker's commit rounds so far: (seconds spent, rounds), from its /metrics."""
    return metric_value(port, COMMIT_METRIC + "_sum"), metric_value(port, COMMIT_METRIC + "_count")


def correlation_id(token: str, i: int | str) -> str:
    return f"e2e-{token}-{i}"


def choose_rate(ctx: Context, override: float | None) -> tuple[float, str]:
    """The POST rate, and where it came from."""
    if override:
        return override, "set with --e2e-rate"
    peaks: list[float] = []
    ingest = ctx.results.get("ingest")
    if ingest:
        one = next((w for w in ingest["by_workers"] if w["workers"] == 1), None)
        if one and one["cfn"]["ok_rps"]:
            peaks.append(float(one["cfn"]["ok_rps"]))
    pipeline = ctx.results.get("pipeline")
    if pipeline and pipeline.get("cfn_one_eps"):
        peaks.append(float(pipeline["cfn_one_eps"]))
    if not peaks:
        return FALLBACK_RATE, "no peak measured in this invocation: fixed fallback"
    return (
        min(peaks) * LOAD_FRACTION,
        f"{LOAD_FRACTION:.0%} of min(cfn ingest peak, one worker's events/s)",
    )


async def _measure(
    sender: Path,
    bootstrap: str,
    ingest_port: int,
    incidents_topic: str,
    rate: float,
    seconds: float,
    out: Path,
) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        incidents_topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    # From the end: every point's correlation ids are its own, and reading the earlier points'
    # records first (over 50,000 each) loaded this process just as the next point began.
    while not consumer.assignment():
        await asyncio.sleep(0.05)
    for tp in consumer.assignment():
        await consumer.position(tp)
    token = uuid.uuid4().hex[:8]
    by_correlation: dict[str, int] = {}  # correlation id -> the client's pair number
    seen: dict[str, float] = {}  # "<pair>:<state>" -> wall-clock time the record was read
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for record in records:
                    value = jsonio.loads(record.value)
                    i = by_correlation.get(value["correlation_id"])
                    if i is not None:
                        seen.setdefault(f"{i}:{value['state']}", now)

    pairs = max(1, int(rate * seconds / 2))
    by_correlation.update({correlation_id(token, i): i for i in range(pairs)})
    reader = asyncio.create_task(consume())
    try:
        templates = []
        for event in EVENTS:
            path = out.with_suffix(f".{event}.json")
            body = webhook_body(correlation_id(token, "@@I@@"), event, TS_MARK)
            body = body.replace(b'"ts":%d' % TS_MARK, b'"ts":@@T@@')
            assert b"@@T@@" in body, body
            await asyncio.to_thread(path.write_bytes, body)
            templates.append(str(path))
        client = await asyncio.create_subprocess_exec(
            str(sender),
            f"http://127.0.0.1:{ingest_port}{WEBHOOK_PATH}",
            SECRET,
            f"{rate:.3f}",
            f"{seconds:.3f}",
            *templates,
            str(out),
            str(CONNECTIONS),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await client.communicate()
        if client.returncode != 0:
            raise RuntimeError(f"e2e sender failed:\n{err.decode()[-3000:]}")
        answer = jsonio.loads(await asyncio.to_thread(out.read_bytes))
        sent: dict[str, float] = answer["sent"]
        answered: dict[str, float] = answer["answered"]
        failures: dict[str, int] = answer["failures"]
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline and not all(k in seen for k in answered):
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await reader
        await consumer.stop()
    from_answer = [(seen[k] - answered[k]) * 1000 for k in answered if k in seen]
    # In sending order: latency that grows from the first quarter to the last means the
    # worker fell behind (a backlog), not a fixed delay.
    ordered = sorted((sent[k], (seen[k] - answered[k]) * 1000) for k in answered if k in seen)
    quarter = max(1, len(ordered) // 4)
    first_q = [latency for _, latency in ordered[:quarter]]
    last_q = [latency for _, latency in ordered[-quarter:]]
    from_send = [(seen[k] - sent[k]) * 1000 for k in answered if k in seen]
    # The worst latency of each second of sending: a stall shows as a run of high seconds.
    start = ordered[0][0] if ordered else 0.0
    worst: dict[int, float] = {}
    for at, latency in ordered:
        second = int(at - start)
        worst[second] = max(worst.get(second, 0.0), latency)
    return {
        "posts": len(sent),
        "accepted": len(answered),
        "incident_versions_seen": len(from_answer),
        "missing": sum(1 for k in answered if k not in seen),
        "failures": failures,
        "p50_ms": finite_or_none(percentile(from_answer, 50)),
        "p99_ms": finite_or_none(percentile(from_answer, 99)),
        "max_ms": finite_or_none(max(from_answer, default=float("nan"))),
        "from_send_p50_ms": finite_or_none(percentile(from_send, 50)),
        "from_send_p99_ms": finite_or_none(percentile(from_send, 99)),
        "first_quarter_p50_ms": finite_or_none(percentile(first_q, 50)),
        "last_quarter_p50_ms": finite_or_none(percentile(last_q, 50)),
        "max_ms_by_second": [round(worst[k]) for k in sorted(worst)],
    }


# CFN_TRANSACTIONS: who writes the worker's transactions; the default first.
MODES = TRANSACTIONS


def run_e2e(ctx: Context, rate_override: float | None = None) -> dict[str, Any]:
    """Each transaction mode (CFN_TRANSACTIONS) through its own worker and ingest: a warm-up,
    a light rate (a tenth of the chosen one) that shows the floor, then the chosen rate `runs`
    times, the modes alternating run by run so that a noisy stretch of the machine falls on
    both. Per mode, the run with the median p99 is the result and every run's is kept.

    The top level of the result is the default mode's (`worker`); `by_mode` has both.
    The warm-up (WARMUP_S at the light rate, reported on its own) carries the first traffic
    over every partition of the new topics: a fresh worker's first seconds of traffic stalled
    for up to a second in some runs here, which landed in whichever point came first.
    """
    rate, why = choose_rate(ctx, rate_override)
    light = max(4.0, rate / 10)
    progress("e2e: building the sender (tests/bench/e2e_sender)")
    sender = go_build(ctx, SENDER)
    seconds = ctx.sizes.e2e_duration
    plan = [("warm-up", light, WARMUP_S), ("light", light, seconds / 2)]
    plan += [(f"run {i + 1}", rate, seconds) for i in range(ctx.sizes.runs)]
    workers: dict[str, Process] = {}
    ingests: dict[str, Process] = {}
    points: dict[str, dict[str, dict[str, Any]]] = {mode: {} for mode in MODES}
    try:
        for mode in MODES:
            prefix = f"bench-e2e-{mode}-{uuid.uuid4().hex[:6]}."
            progress(f"e2e: a worker (CFN_TRANSACTIONS={mode}) and cfn ingest on {prefix}*")
            workers[mode] = start_worker(
                ctx.tmp,
                ctx.bootstrap,
                prefix,
                f"bench-e2e-{mode}-{uuid.uuid4().hex[:6]}",
                {"CFN_TICK_INTERVAL": "1s", "CFN_TRANSACTIONS": mode},
                partitions=12,
            )
            ingests[mode] = start_ingest(
                ctx.tmp,
                ctx.bootstrap,
                prefix,
                {"CFN_INGEST_SECRET": SECRET, "CFN_PARTITIONS": "12"},
            )
        for name, point_rate, point_seconds in plan:
            for mode in MODES:
                progress(f"e2e: {mode}: {name}: {point_rate:.0f} POST/s for {point_seconds:.0f}s")
                points[mode][name] = _point(
                    ctx, sender, workers[mode], ingests[mode], mode, point_rate, point_seconds
                )
    finally:
        for ingest in ingests.values():
            ingest.stop()
        for worker in workers.values():
            worker.stop(timeout=30)
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        loaded = [points[mode][name] for name, _rate, _seconds in plan[2:]]
        result = median_run(loaded)
        result.update(
            mode=mode,
            rate_source=why,
            light=points[mode]["light"],
            warmup=points[mode]["warm-up"],
            run_p99_ms=[p["p99_ms"] for p in loaded],
            run_p50_ms=[p["p50_ms"] for p in loaded],
            missing_all_runs=sum(p["missing"] for p in loaded),
        )
        by_mode[mode] = result
    return {**by_mode[MODES[0]], "by_mode": by_mode}


def _point(
    ctx: Context,
    sender: Path,
    worker: Process,
    ingest: Process,
    mode: str,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """One point: `rate` POST/s for `seconds` through one mode's stack, with that worker's
    commit rounds over the point."""
    spent, rounds = commit_totals(worker.port)
    point = asyncio.run(
        _measure(
            sender,
            ctx.bootstrap,
            ingest.port,
            f"{ingest.env['CFN_TOPIC_PREFIX']}incidents",
            rate,
            seconds,
            ctx.tmp / f"e2e-client-{mode}-{uuid.uuid4().hex[:6]}.json",
        )
    )
    spent_after, rounds_after = commit_totals(worker.port)
    point.update(
        rate=rate,
        seconds=seconds,
        commit_rounds=int(rounds_after - rounds),
        commit_round_mean_ms=finite_or_none(
            (spent_after - spent) * 1000 / max(1.0, rounds_after - rounds)
        ),
    )
    progress(
        f"e2e:   p50 {point['p50_ms'] or float('nan'):.0f} ms, "
        f"p99 {point['p99_ms'] or float('nan'):.0f} ms over "
        f"{point['incident_versions_seen']} incident versions "
        f"({point['missing']} missing); {point['commit_rounds']} commit rounds, "
        f"{point['commit_round_mean_ms'] or float('nan'):.0f} ms each on average"
    )
    return point
