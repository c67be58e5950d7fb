"""Section `security`: what SASL_SSL (SCRAM-SHA-512 over TLS) costs, against PLAINTEXT.

One secured broker (cfn.shell.broker.LocalKafka, secure) with an extra open PLAINTEXT listener, so
both contenders talk to the same JVM, disk and log: the only difference is the listener.

* ingest: `cfn ingest` (one process) over each listener, wrk at fixed concurrency, rounds
  alternating which goes first; the ratio is the median of the rounds' ratios.
* worker: one `cfn worker` over each listener through the same pre-filled raw topic (a fresh
  group each run), records per second from start to the last one processed and committed.
"""

from __future__ import annotations

import uuid
from typing import Any

from cfn.shell.broker import LocalKafka
from tests.bench.core import SECRET, Context, finite_or_none, median, progress, ratio
from tests.bench.ingest_bench import wrk_once
from tests.bench.load import lua_script
from tests.bench.pipeline_bench import prefill, run_one
from tests.conftest import free_ports
from tests.services import start_ingest

CONTENDERS = ("plaintext", "sasl_ssl")


def _ingest(ctx: Context, broker: LocalKafka) -> dict[str, Any]:
    script = lua_script(ctx.tmp / "security-post.lua")
    envs = {"plaintext": {}, "sasl_ssl": broker.client_env()}
    servers = {
        name: start_ingest(
            ctx.tmp,
            broker.plaintext_bootstrap,
            f"bench-sec-{name}.",
            {"CFN_INGEST_SECRET": SECRET, "CFN_PARTITIONS": "12", **env},
        )
        for name, env in envs.items()
    }
    rounds: list[dict[str, Any]] = []
    try:
        if ctx.sizes.wrk_warmup > 0:
            for name in CONTENDERS:
                wrk_once(ctx, servers[name], script, ctx.sizes.wrk_warmup)
        for r in range(ctx.sizes.runs):
            round_result: dict[str, Any] = {}
            for name in CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]:
                got = wrk_once(ctx, servers[name], script, ctx.sizes.wrk_duration)
                round_result[name] = got.as_dict()
                progress(
                    f"security: ingest run {r + 1}/{ctx.sizes.runs} {name}: "
                    f"{got.ok_rps:.0f} req/s p99 {got.p99_ms:.1f} ms"
                    + (f" ({got.non_2xx} non-2xx)" if got.non_2xx else "")
                )
            rounds.append(round_result)
    finally:
        for process in servers.values():
            process.stop()

    def cpu_per_request(result: dict[str, Any]) -> float:
        done = result["requests"] - result["non_2xx"]
        return ratio(result["server_cpu_s"] * 1e6, done)

    return {
        "runs": rounds,
        **{
            f"{name}_rps": finite_or_none(median([r[name]["ok_rps"] for r in rounds]))
            for name in CONTENDERS
        },
        **{
            f"{name}_cpu_us_per_request": finite_or_none(
                median([cpu_per_request(r[name]) for r in rounds])
            )
            for name in CONTENDERS
        },
        "ratio_sasl_ssl_vs_plaintext": finite_or_none(
            median([ratio(r["sasl_ssl"]["ok_rps"], r["plaintext"]["ok_rps"]) for r in rounds])
        ),
    }


def _worker(ctx: Context, broker: LocalKafka) -> dict[str, Any]:
    n = max(10_000, ctx.sizes.pipeline_n // 2)
    plain = Context(ctx.sizes, broker.plaintext_bootstrap, ctx.tmp)
    pre = prefill(plain, n)
    token = uuid.uuid4().hex[:6]
    envs = {"plaintext": None, "sasl_ssl": broker.client_env()}
    rounds: list[dict[str, Any]] = []
    for r in range(ctx.sizes.runs):
        round_result: dict[str, Any] = {}
        for name in CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]:
            result = run_one(plain, pre, f"bench-sec-{name}-{token}-{r}", env=envs[name])
            round_result[name] = result
            eps, committed = result.get("eps") or 0, result.get("committed_eps") or 0
            progress(
                f"security: worker run {r + 1}/{ctx.sizes.runs} {name}: "
                f"{eps:.0f} ev/s, committed {committed:.0f}"
            )
        rounds.append(round_result)

    def per_round(key: str) -> float | None:
        values = [
            ratio(float(r["sasl_ssl"][key]), float(r["plaintext"][key]))
            for r in rounds
            if r["sasl_ssl"].get(key) and r["plaintext"].get(key)
        ]
        return finite_or_none(median(values))

    return {
        "n": n,
        "runs": [
            {
                k: {"eps": v.get("eps"), "committed_eps": v.get("committed_eps")}
                for k, v in r.items()
            }
            for r in rounds
        ],
        **{
            f"{name}_eps": finite_or_none(
                median([float(r[name]["eps"]) for r in rounds if r[name].get("eps")])
            )
            for name in CONTENDERS
        },
        "ratio_sasl_ssl_vs_plaintext": per_round("eps"),
        "ratio_committed_sasl_ssl_vs_plaintext": per_round("committed_eps"),
    }


def run_security(ctx: Context) -> dict[str, Any]:
    port, controller, ssl_port, plain_port = free_ports(4)
    broker = LocalKafka(
        data_dir=ctx.tmp / "secure-kafka",
        port=port,
        controller_port=controller,
        ssl_port=ssl_port,
        plaintext_port=plain_port,
        secure=True,
        heap="1g",
    )
    progress("security: starting a secured Kafka with an open PLAINTEXT listener beside")
    broker.start()
    try:
        return {
            "mechanism": "SCRAM-SHA-512 over TLS (SASL_SSL), one broker",
            "ingest": _ingest(ctx, broker),
            "worker": _worker(ctx, broker),
        }
    finally:
        broker.stop()
