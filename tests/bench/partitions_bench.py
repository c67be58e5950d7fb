"""Section `partitions`: one worker's cost in partitions, 12 against 96, on the same records.

The same realistic records (tests/workload.py) go into two raw topics, one of 12 partitions and
one of 96. One `cfn worker` (CFN_PARTITIONS set to match) reads each with a fresh group; rounds
alternate which goes first. Four contenders:

* `p12`, `p96`: 12 and 96 partitions with a transactional producer per partition
  (CFN_TRANSACTIONS=partition): a commit round writes a transaction per
  partition every CFN_COMMIT_INTERVAL;
* `p12_worker`, `p96_worker`: the same with one producer per worker (CFN_TRANSACTIONS=worker,
  KIP-447, the default): one transaction per commit round, however many partitions;
* `p96_slow`: `p96` at the commit interval of 0.2 s that was the default before it became 0.1 s
  (for end-to-end latency): what the shorter interval costs over 96 partitions.

(Rounds paced to a transaction budget, CFN_MAX_TRANSACTIONS_PER_S, measured 0.67 against 0.66
unpaced in an earlier run and are no longer a contender: docs/design.md.)

Reported: events/s from the first record processed to the last (or the end of the time box), the
same counted by committed offsets, the time from start to /readyz 200 (a first start: the worker
creates its changelog, one topic of 12 or 96 partitions), and the time to /readyz 200 of a
restart of the same worker right after its run (the topics exist; it restores the changelog the
run wrote); the ratios are the medians of the rounds' ratios.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.bench.core import Context, finite_or_none, median, progress, ratio
from tests.bench.pipeline_bench import (
    Prefilled,
    WorkerCrashed,
    prefill,
    run_one,
    start_cfn,
    workload_shape,
)
from tests.services import wait_ready
from tests.workload import build

CONTENDERS: dict[str, tuple[int, dict[str, str]]] = {
    "p12": (12, {"CFN_TRANSACTIONS": "partition"}),
    "p96": (96, {"CFN_TRANSACTIONS": "partition"}),
    "p12_worker": (12, {"CFN_TRANSACTIONS": "worker"}),
    "p96_worker": (96, {"CFN_TRANSACTIONS": "worker"}),
    "p96_slow": (96, {"CFN_TRANSACTIONS": "partition", "CFN_COMMIT_INTERVAL": "0.2s"}),
}
RESTARTED = ("p12", "p96", "p12_worker", "p96_worker")


def run_partitions(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.partitions_n
    incidents, one_offs = workload_shape(n)
    work = build(incidents, one_offs, int(time.time() * 1000))
    progress(f"partitions: {len(work.records)} records into a 12- and a 96-partition topic")
    filled = {count: prefill(ctx, n, count, work) for count in (12, 96)}
    token = uuid.uuid4().hex[:6]
    rounds: list[dict[str, Any]] = []
    names = list(CONTENDERS)
    for r in range(ctx.sizes.runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        round_result: dict[str, Any] = {}
        for name in order:
            count, env = CONTENDERS[name]
            pre = filled[count]
            app_id = f"bench-parts-{name}-{token}-{r}"
            progress(f"partitions: run {r + 1}/{ctx.sizes.runs}: {name} over {pre.n} records")
            worker_env = {"CFN_PARTITIONS": str(count), **env}
            try:
                got = run_one(ctx, pre, app_id, worker_env)
                if name in RESTARTED:
                    got["restart_s"] = restart_ready(ctx, pre, app_id, worker_env)
            except WorkerCrashed as exc:
                got = {"error": str(exc), "log_tail": exc.log_tail}
            got.pop("timeline", None)
            round_result[name] = got
            progress(
                f"partitions:   {name}: "
                + " ".join(
                    f"{key}={got[key]:.1f}"
                    for key in ("eps", "committed_eps", "ready_s", "restart_s")
                    if got.get(key) is not None
                )
            )
        rounds.append(round_result)

    def per_round(a: str, b: str, key: str) -> float | None:
        values = [
            ratio(float(r[a][key]), float(r[b][key]))
            for r in rounds
            if r[a].get(key) is not None and r[b].get(key) is not None
        ]
        return finite_or_none(median(values))

    def med(name: str, key: str) -> float | None:
        return finite_or_none(
            median([float(r[name][key]) for r in rounds if r[name].get(key) is not None])
        )

    return {
        "n": filled[12].n,
        "box_s": ctx.sizes.pipeline_box_s,
        "runs": rounds,
        **{
            f"{name}_{key}": med(name, key)
            for name in CONTENDERS
            for key in ("eps", "committed_eps", "ready_s", "restart_s")
        },
        "ratio_96_vs_12": per_round("p96", "p12", "eps"),
        "ratio_96_vs_12_committed": per_round("p96", "p12", "committed_eps"),
        "ratio_ready_96_vs_12": per_round("p96", "p12", "ready_s"),
        "ratio_96_vs_12_worker": per_round("p96_worker", "p12_worker", "eps"),
        "ratio_96_worker_vs_12": per_round("p96_worker", "p12", "eps"),
        "ratio_ready_96_vs_12_worker": per_round("p96_worker", "p12_worker", "ready_s"),
        "ratio_12_worker_vs_partition": per_round("p12_worker", "p12", "eps"),
        "ratio_restart_96_vs_12": per_round("p96", "p12", "restart_s"),
        "ratio_restart_96_vs_12_worker": per_round("p96_worker", "p12_worker", "restart_s"),
        "ratio_96_interval_01_vs_02": per_round("p96", "p96_slow", "eps"),
    }


def restart_ready(ctx: Context, pre: Prefilled, app_id: str, env: dict[str, str]) -> float:
    """Seconds from starting the worker of `app_id` again (after its run stopped it cleanly) to
    its /readyz 200: it rejoins its group and restores what its run wrote to the changelogs."""
    started = time.monotonic()
    process = start_cfn(ctx, pre, app_id, env)
    try:
        wait_ready(process, process.port, "/readyz", timeout=300)
        return time.monotonic() - started
    finally:
        process.stop(timeout=30)
