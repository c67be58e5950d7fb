"""results.json, results.md and docs/performance.md (`--doc`) from one invocation.

`python -m tests.bench.report --doc docs/performance.md` writes results.md and the page, with
its charts, again from the results.json of the last run, without running anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio
from tests.bench.core import LOAD_FRACTION
from tests.bench.ingest_bench import CONTENDERS as INGEST_CONTENDERS

TARGETS_NOTE = (
    "The brief's pipeline target reads `a/b >= 1.5` with a = cfn worker, b = bare agent; a "
    "worker doing strictly more per record than an agent that only decodes cannot be faster "
    "than it, so this is judged both as written and as `b/a <= 1.5` (a/b >= 0.67), the reading "
    "that can be met."
)


# granian would replace cfn's own HTTP/1.1 protocol if it kept the ingest at this share of the
# req/s cfn's protocol makes, measured in the same run.
GRANIAN_ADOPT = 0.9

# Resident bytes per key: a dedup id, an open incident.
MEMORY_TARGETS = {"dedup": 200, "correlate": 400}


def _num(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    number = float(value)
    text = f"{number:,.{digits}f}"
    return text + suffix


def _met(value: Any, ok: bool | None) -> str:
    if value is None or ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the brief with its measured value and whether it was met."""
    out: list[dict[str, Any]] = []
    sections = _ok(results)

    def add(name: str, value: Any, target: str, ok: bool | None) -> None:
        out.append({"name": name, "value": value, "target": target, "met": ok})

    ingest = sections.get("ingest")
    if ingest:
        for entry in ingest["by_workers"]:
            value = entry["ratio_cfn_vs_bare_kafka"]
            add(
                f"ingest req/s cfn / bare+Kafka, {entry['workers']} process(es)",
                value,
                ">= 0.8",
                None if value is None else value >= 0.8,
            )
            value = entry.get("ratio_cfn_vs_go_peer")
            add(
                f"ingest req/s cfn / Go net/http + franz-go peer, {entry['workers']} process(es)",
                value,
                ">= 0.6",
                None if value is None else value >= 0.6,
            )
            if "granian_cfn" in entry:  # results written before granian was measured have none
                value = entry["ratio_granian_cfn_vs_cfn"]
                add(
                    f"ingest req/s cfn's app on granian / on cfn's protocol (adopt "
                    f"granian at >= 0.9), {entry['workers']} process(es)",
                    value,
                    ">= 0.9",
                    None if value is None else value >= GRANIAN_ADOPT,
                )
    pipeline = sections.get("pipeline")
    if pipeline:
        value = pipeline["ratio_cfn_vs_bare"]
        add(
            "pipeline events/s cfn worker / bare agent (as written)",
            value,
            ">= 1.5",
            None if value is None else value >= 1.5,
        )
        add(
            "pipeline events/s bare agent / cfn worker",
            None if not value else 1 / value,
            "<= 1.5",
            None if not value else 1 / value <= 1.5,
        )
        value = pipeline["ratio_two_vs_one"]
        add(
            "pipeline events/s two workers / one",
            value,
            ">= 1.8",
            None if value is None else value >= 1.8,
        )
        value = pipeline.get("ratio_two_vs_one_per_cpu")
        add(
            "pipeline events per CPU-second, two workers / one",
            value,
            ">= 0.9",
            None if value is None else value >= 0.9,
        )
        value = pipeline.get("ratio_cfn_vs_quix_committed")
        add(
            "pipeline events/s cfn worker / quixstreams exactly-once dedup peer (committed)",
            value,
            ">= 1.3",
            None if value is None else value >= 1.3,
        )
    restore = (pipeline or {}).get("restore") or {}
    if restore.get("runs"):
        recognised = bool(restore["state_recognised"])
        add("restart restores every changelog key", recognised, "all keys", recognised)
    parts = sections.get("partitions")
    if parts:
        for mode, suffix in (("a producer per partition", ""), ("one per worker", "_worker")):
            value = parts[f"ratio_96_vs_12{suffix}"]
            add(
                f"one worker's events/s over 96 partitions / over 12 ({mode})",
                value,
                ">= 0.9",
                None if value is None else value >= 0.9,
            )
            value = parts[f"ratio_ready_96_vs_12{suffix}"]
            add(
                f"one worker's time to ready over 96 partitions / over 12, first start ({mode})",
                value,
                "<= 1.5",
                None if value is None else value <= 1.5,
            )
            value = parts.get(f"ratio_restart_96_vs_12{suffix}")
            if value is not None:
                add(
                    f"one worker's time to ready over 96 partitions / over 12, restart ({mode})",
                    value,
                    "<= 1.5",
                    value <= 1.5,
                )
    for mode, e2e in _e2e_modes(sections.get("e2e")):
        value = e2e["p99_ms"]
        missing = e2e.get("missing_all_runs", e2e["missing"])
        ok = None if value is None else value < 1000 and missing == 0
        add(f"end to end p99 (ms), webhook 202 -> incident record ({mode})", value, "< 1000", ok)
        ok = None if value is None else value < 300 and missing == 0
        add(f"end to end p99 (ms) at 25% of peak ({mode})", value, "< 300", ok)
    memory = sections.get("memory")
    if memory:
        for kind, label in (("dedup", "dedup key"), ("correlate", "open incident")):
            value = memory[kind]["bytes_per_key"]
            limit = MEMORY_TARGETS[kind]
            add(f"memory bytes per {label}", value, f"<= {limit}", value <= limit)
    return out


def write_doc(results: dict[str, Any], path: Path) -> None:
    """docs/performance.md: the same section as results.md, as a page of its own, with charts
    (drawn into img/ beside it) after the table of goals."""
    from tests.bench import charts

    body = render_md(results).split("\n", 1)[1]  # without its "## Performance" heading
    drawn = charts.draw(results, targets(results), path.parent / "img")
    if drawn:
        shown = "".join(
            f"![{CHART_TEXT[p.stem]}](img/{p.name})\n\n" for p in drawn if p.stem in CHART_TEXT
        )
        head, detail, rest = body.partition("\n### ")
        body = f"{head}\n{shown}" + (f"{detail.lstrip()}{rest}" if detail else "")
    minutes = round(results.get("duration_s", 600) / 60)
    path.write_text(
        "# Performance\n\n<!-- Generated by `make bench` (tests/bench/report.py) from "
        "tests/bench/results.json: edit neither by hand. -->\n\nReproduce: `make bench` (about "
        f"{minutes} minutes here; `.venv/bin/python -m tests.bench --quick --doc "
        "docs/performance.md` in about 4). Figures are from the run of the date below.\n" + body
    )


# The alternative text of each chart (tests/bench/charts.py), by file stem.
CHART_TEXT = {
    "bench-goals": "Each goal of the table above as measured / target: 1 is on target, "
    "longer bars are met (green), shorter ones missed (orange)",
    "bench-ingest": "Ingest requests per second by server, one and two processes",
    "bench-e2e": "End to end: the worst latency from the 202 to the incident record in each "
    "second of sending, for each owner of the worker's transactions, against the 300 ms goal",
}


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    json_path = out_dir / "results.json"
    json_path.write_bytes(jsonio.dumps(results) + b"\n")
    md_path = out_dir / "results.md"
    md_path.write_text(render_md(results))
    return json_path, md_path


def _ok(results: dict[str, Any]) -> dict[str, Any]:
    """The sections that finished (a failed one holds only its error)."""
    return {k: v for k, v in results.get("sections", {}).items() if "error" not in v}


def render_md(results: dict[str, Any]) -> str:
    sections = _ok(results)
    lines = ["## Performance", ""]
    mode = (
        "in **quick mode** (one run, small sizes, short loads: indicative only)"
        if results["quick"]
        else f"in full mode (medians of {results['runs']} runs)"
    )
    lines += [
        f"Measured with `{results['command']}` {mode} on {results['date']}, "
        f"in {results['duration_s']:.0f} s. Every speed is a ratio against a baseline measured "
        "in the same invocation on the same machine, so the ratios carry over to other "
        "machines far better than the absolute figures, which are shown for scale only.",
        "",
    ]
    if results.get("note"):
        lines += [f"> {results['note']}", ""]
    for name, section in results.get("sections", {}).items():
        if "error" in section:
            lines += [f"> The {name} section FAILED: {section['error']}", ""]
    lines += [
        "| Measure | cfn | Baseline | Ratio | Target | Result |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    lines += _summary_rows(sections)
    lines.append("")
    lines += _ingest_detail(sections.get("ingest"))
    lines += _pipeline_detail(sections.get("pipeline"))
    lines += _e2e_detail(sections.get("e2e"))
    lines += _memory_detail(sections.get("memory"), sections.get("pipeline"))
    lines += _security_detail(sections.get("security"))
    lines += _machine(results["machine"])
    return "\n".join(lines) + "\n"


def _summary_rows(sections: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    ingest = sections.get("ingest")
    if ingest:
        wrk = ingest["wrk"]
        load = f"wrk -t{wrk['threads']} -c{wrk['connections']} -d{wrk['duration_s']:.0f}s"
        for entry in ingest["by_workers"]:
            w = entry["workers"]
            r = entry["ratio_cfn_vs_bare_kafka"]
            rows.append(
                f"| Ingest req/s, {w} process(es) ({load}) "
                f"| {_num(entry['cfn']['ok_rps'])} "
                f"| {_num(entry['bare_kafka']['ok_rps'])} (bare handler + same Kafka send) "
                f"| {_num(r, 2)} | >= 0.8 | {_met(r, None if r is None else r >= 0.8)} |"
            )
            rows.append(
                f"| Bare + Kafka vs bare HTTP, {w} process(es) "
                f"| {_num(entry['bare_kafka']['ok_rps'])} "
                f"| {_num(entry['bare_http']['ok_rps'])} (bare handler, no Kafka) "
                f"| {_num(entry['ratio_bare_kafka_vs_bare_http'], 2)} | (cost of the ack) | |"
            )
            go = entry.get("go_peer")
            if go:
                r = entry["ratio_cfn_vs_go_peer"]
                rows.append(
                    f"| Ingest req/s vs a Go peer (net/http + franz-go, acks=all, idempotent; "
                    f"all cores), cfn {w} process(es) "
                    f"| {_num(entry['cfn']['ok_rps'])} | {_num(go['ok_rps'])} (Go peer) "
                    f"| {_num(r, 2)} | >= 0.6 | {_met(r, None if r is None else r >= 0.6)} |"
                )
                rows.append(
                    f"| Ingest requests per CPU-second vs the Go peer, cfn {w} process(es) "
                    f"| {_num(entry['cfn']['rps_per_cpu_s'])} | {_num(go['rps_per_cpu_s'])} "
                    f"| {_num(entry['ratio_cfn_vs_go_peer_per_cpu'], 2)} | | |"
                )
            keyed = entry.get("go_keyed")
            if keyed and go:
                rows.append(
                    f"| Ingest req/s vs the Go peer keying records as cfn does (spread over "
                    f"the 12 partitions), cfn {w} process(es) "
                    f"| {_num(entry['cfn']['ok_rps'])} | {_num(keyed['ok_rps'])} (keyed Go peer) "
                    f"| {_num(entry['ratio_cfn_vs_go_keyed'], 2)} | | |"
                )
                rows.append(
                    f"| Go peer keying records as cfn does vs unkeyed, beside cfn {w} process(es) "
                    f"| {_num(keyed['ok_rps'])} | {_num(go['ok_rps'])} (Go peer) "
                    f"| {_num(entry['ratio_go_keyed_vs_go_peer'], 2)} | (what the key costs) | |"
                )
            rows += _granian_rows(entry)
            at_rate = entry["fixed_rate"]
            rows.append(
                f"| Ingest p99 ms at {_num(at_rate['rate'])} req/s "
                f"({at_rate['fraction']:.0%} of peak), {w} process(es) "
                f"| {_num(at_rate['cfn']['p99_ms'], 1)} "
                f"| {_num(at_rate['bare_kafka']['p99_ms'], 1)} (bare + Kafka) "
                f"| {_num(at_rate['ratio_p99_cfn_vs_bare_kafka'], 2)} | | |"
            )
    pipeline = sections.get("pipeline")
    if pipeline:
        r = pipeline["ratio_cfn_vs_bare"]
        rows.append(
            f"| Pipeline events/s, one worker, {_num(pipeline['n'])} records "
            f"| {_num(pipeline['cfn_one_eps'])} "
            f"| {_num(pipeline['bare_eps'])} (bare Faust agent: iterate + orjson.loads) "
            f"| {_num(r, 2)} | >= 1.5 as written; >= 0.67 read as bare/cfn <= 1.5 "
            f"| {_met(r, None if r is None else r >= 1.5)} as written; "
            f"{_met(r, None if r is None else r >= 1 / 1.5)} as bare/cfn <= 1.5 |"
        )
        r = pipeline["ratio_cfn_vs_bare_per_cpu"]
        rows.append(
            f"| Pipeline events per CPU-second, one worker "
            f"| {_num(pipeline['cfn_one_eps_per_cpu_s'])} "
            f"| {_num(pipeline['bare_eps_per_cpu_s'])} (bare agent) | {_num(r, 2)} | | |"
        )
        r = pipeline["ratio_two_vs_one"]
        rows.append(
            f"| Pipeline events/s, two workers in one group vs one (by committed offsets) "
            f"| {_num(pipeline['cfn_two_committed_eps'])} "
            f"| {_num(pipeline['cfn_one_committed_eps'])} (one worker) "
            f"| {_num(r, 2)} | >= 1.8 | {_met(r, None if r is None else r >= 1.8)} |"
        )
        r = pipeline.get("ratio_two_vs_one_per_cpu")
        rows.append(
            f"| Pipeline committed events per CPU-second, two workers vs one "
            f"| | | {_num(r, 2)} | >= 0.9 | {_met(r, None if r is None else r >= 0.9)} |"
        )
        r = pipeline.get("ratio_cfn_vs_quix_committed")
        if pipeline.get("quix_committed_eps") is not None:
            rows.append(
                f"| Pipeline events/s by committed offsets, cfn worker (dedup, correlation, "
                f"rates, anomalies, flapping, enrichment, metrics) vs quixstreams "
                f"{pipeline['quix_version']} exactly-once, dedup only "
                f"| {_num(pipeline['cfn_one_committed_eps'])} "
                f"| {_num(pipeline['quix_committed_eps'])} (quixstreams peer) "
                f"| {_num(r, 2)} | >= 1.3 | {_met(r, None if r is None else r >= 1.3)} |"
            )
        restore = pipeline.get("restore") or {}
        if restore.get("runs"):
            rows.append(
                f"| Restart to ready (s) with {_num(restore['dedup_keys'])} dedup ids + "
                f"{_num(restore['incident_keys'])} open incidents in the changelogs "
                f"| {_num(restore['restore_ready_s'], 1)} "
                f"| {_num(restore['fresh_ready_s'], 1)} (same worker, empty changelogs) "
                f"| {_num(restore['ratio_restore_vs_fresh'], 2)} | | |"
            )
            recognised = bool(restore["state_recognised"])
            rows.append(
                "| Restart restores every key from the changelogs "
                f"| {'yes' if recognised else 'NO'} | | | all keys "
                f"| {_met(recognised, recognised)} |"
            )
    parts = sections.get("partitions")
    if parts:
        for mode, name in (
            ("one producer per worker (CFN_TRANSACTIONS=worker, the default)", "_worker"),
            ("a transactional producer per partition (CFN_TRANSACTIONS=partition)", ""),
        ):
            r = parts[f"ratio_96_vs_12{name}"]
            rows.append(
                f"| One worker's events/s over 96 partitions vs 12, {_num(parts['n'])} records, "
                f"{mode} | {_num(parts[f'p96{name}_eps'])} "
                f"| {_num(parts[f'p12{name}_eps'])} (12 partitions) "
                f"| {_num(r, 2)} | >= 0.9 | {_met(r, None if r is None else r >= 0.9)} |"
            )
            r = parts[f"ratio_ready_96_vs_12{name}"]
            rows.append(
                f"| Time to ready (s) on a first start (it creates its changelog of 96 or 12 "
                f"partitions), 96 partitions vs 12, {mode} "
                f"| {_num(parts[f'p96{name}_ready_s'], 1)} "
                f"| {_num(parts[f'p12{name}_ready_s'], 1)} "
                f"| {_num(r, 2)} | <= 1.5 | {_met(r, None if r is None else r <= 1.5)} |"
            )
            r = parts.get(f"ratio_restart_96_vs_12{name}")
            if r is not None:
                rows.append(
                    f"| Time to ready (s) on a restart after the run (restoring its "
                    f"changelog), 96 partitions vs 12, {mode} "
                    f"| {_num(parts[f'p96{name}_restart_s'], 1)} "
                    f"| {_num(parts[f'p12{name}_restart_s'], 1)} "
                    f"| {_num(r, 2)} | <= 1.5 | {_met(r, r <= 1.5)} |"
                )
        r = parts["ratio_96_worker_vs_12"]
        rows.append(
            f"| Events/s over 96 partitions with one producer per worker vs 12 with a producer "
            f"per partition | {_num(parts['p96_worker_eps'])} "
            f"| {_num(parts['p12_eps'])} | {_num(r, 2)} | | |"
        )
        r = parts.get("ratio_96_interval_01_vs_02")
        if r is not None:
            rows.append(
                f"| Cost of the 0.1 s commit interval over 96 partitions (a producer per "
                f"partition): events/s at 0.1 s vs 0.2 s | {_num(parts['p96_eps'])} "
                f"| {_num(parts['p96_slow_eps'])} (0.2 s) | {_num(r, 2)} | | |"
            )
    for mode, e2e in _e2e_modes(sections.get("e2e")):
        p99 = e2e["p99_ms"]
        missing = e2e.get("missing_all_runs", e2e["missing"])
        ok = None if p99 is None else p99 < 1000 and missing == 0
        runs = e2e.get("run_p99_ms") or []
        rows.append(
            f"| End to end ms (202 -> incident record), p50 / p99 at "
            f"{_num(e2e['rate'])} POST/s, {MODE_NAMES[mode]}"
            + (f" (the median of {len(runs)} runs by p99)" if len(runs) > 1 else "")
            + f" | {_num(e2e['p50_ms'])} / {_num(p99)} | | | p99 < 1000; < 300 "
            f"| {_met(p99, ok)}; {_met(p99, None if p99 is None or missing else p99 < 300)} |"
        )
        light = e2e.get("light") or {}
        if light:
            rows.append(
                f"| End to end ms, p50 / p99 at a light {_num(light['rate'])} POST/s, "
                f"{MODE_NAMES[mode]} | {_num(light['p50_ms'])} / {_num(light['p99_ms'])} "
                "| | | | |"
            )
    security = sections.get("security")
    if security:
        ingest, worker = security["ingest"], security["worker"]
        rows.append(
            f"| Ingest req/s over SASL_SSL (SCRAM) vs PLAINTEXT, 1 process "
            f"| {_num(ingest['sasl_ssl_rps'])} | {_num(ingest['plaintext_rps'])} "
            f"| {_num(ingest['ratio_sasl_ssl_vs_plaintext'], 2)} | | |"
        )
        rows.append(
            f"| Worker events/s over SASL_SSL (SCRAM) vs PLAINTEXT "
            f"| {_num(worker['sasl_ssl_eps'])} | {_num(worker['plaintext_eps'])} "
            f"| {_num(worker['ratio_sasl_ssl_vs_plaintext'], 2)} | | |"
        )
    memory = sections.get("memory")
    if memory:
        base = memory["dict"]
        for kind, label in (("dedup", "live dedup key"), ("correlate", "open incident")):
            entry = memory[kind]
            value = entry["bytes_per_key"]
            rows.append(
                f"| Memory bytes per {label} ({_num(memory['keys'])} keys, worker's table) "
                f"| {_num(value)} | {_num(base['bytes_per_key'])} (plain dict id -> int) "
                f"| {_num(entry['ratio_bytes_vs_dict'], 2)} | <= {MEMORY_TARGETS[kind]} B "
                f"| {_met(value, value <= MEMORY_TARGETS[kind])} |"
            )
    return rows


def _granian_rows(entry: dict[str, Any]) -> list[str]:
    """The same app and the bare handler on granian vs on cfn's protocol."""
    granian, bare = entry.get("granian_cfn"), entry.get("granian_bare")
    if not granian or not bare:  # results written before granian was measured
        return []
    w = entry["workers"]
    r = entry["ratio_granian_cfn_vs_cfn"]
    per_round = ", ".join(
        _num(ratio_of(run["granian_cfn"]["ok_rps"], run["cfn"]["ok_rps"]), 2)
        for run in entry["runs"]
    )
    return [
        f"| Ingest req/s, cfn's app (auth, parse, key, Kafka acks=all) on granian RSGI vs on "
        f"cfn's own HTTP/1.1 protocol, {w} process(es) (rounds: {per_round}) "
        f"| {_num(granian['ok_rps'])} | {_num(entry['cfn']['ok_rps'])} (cfn's protocol) "
        f"| {_num(r, 2)} | >= {GRANIAN_ADOPT} (adopt granian) "
        f"| {_met(r, None if r is None else r >= GRANIAN_ADOPT)} |",
        *_granian_slim_row(entry),
        f"| Bare handler req/s (read the body, 202; no Kafka) on granian RSGI vs on cfn's "
        f"protocol, {w} process(es) "
        f"| {_num(bare['ok_rps'])} | {_num(entry['bare_http']['ok_rps'])} (cfn's protocol) "
        f"| {_num(entry['ratio_granian_bare_vs_bare_http'], 2)} | (the servers' ceilings) | |",
    ]


def _granian_slim_row(entry: dict[str, Any]) -> list[str]:
    slim = entry.get("granian_kafka")
    if not slim:
        return []
    return [
        f"| Slim webhook req/s (secret check, body, the same Kafka write, 202 after the ack) "
        f"on granian RSGI vs bare+Kafka on cfn's protocol, {entry['workers']} process(es) "
        f"| {_num(slim['ok_rps'])} | {_num(entry['bare_kafka']['ok_rps'])} (bare + Kafka) "
        f"| {_num(entry['ratio_granian_kafka_vs_bare_kafka'], 2)} | (vs cfn itself: "
        f"{_num(entry['ratio_granian_kafka_vs_cfn'], 2)}) | |"
    ]


def _ingest_detail(ingest: dict[str, Any] | None) -> list[str]:
    if not ingest:
        return []
    lines = [
        "### Ingest detail",
        "",
        f"POST of a {ingest['wrk']['body_bytes']}-byte health-check notification with a fresh "
        "correlation id each time and the `cf-webhook-auth` header; medians over runs. "
        "`bare+Kafka` is tests/bench/bare_ingest.py (the same HTTP stack: uvicorn with the same "
        "options running ingest/http.py's protocol; cfn's own sink with "
        "its defaults: librdkafka's idempotent acks=all lz4 producer, a 1 ms linger; no key, so "
        "librdkafka's sticky partitioner fills one partition's batch at a time); `bare HTTP` "
        "is the same handler with no Kafka. `go_peer` is tests/bench/go_peer (net/http, a "
        "SHA-256 check of the secret, a JSON check, franz-go with acks=all and idempotence; no "
        "key, so franz-go's sticky partitioner fills one partition at a time); `go_keyed` is the "
        "same program keying each record as cfn keys `cfn.raw` (its incident), so its records "
        "spread over the topic's 12 partitions as cfn's do. "
        + (
            "`granian_cfn` is cfn's own "
            "IngestApp, built as `cfn ingest` builds it (same settings, secrets and sink), "
            "served by granian's RSGI interface instead of cfn's protocol "
            "(tests/bench/granian_ingest.py, the same worker count, uvloop, HTTP/1.1); "
            "`granian_kafka` is a slim RSGI app on granian that checks the secret, reads the "
            "body and makes bare+Kafka's write; `granian_bare` is granian answering 202 "
            "to any POST after reading its body, beside `bare HTTP`. "
            if any(name.startswith("granian_") for e in ingest["by_workers"] for name in e)
            else ""
        )
        + f"Latency at {LOAD_FRACTION:.0%} of cfn's peak comes from tests/bench/rate_client.py "
        "(open loop, measured from the scheduled send time, as wrk2 would; wrk2 is not "
        "installed); cfn and bare alternate, one run per round, and each side's run with the "
        "median p99 is shown.",
        "",
        "| Processes | Server | req/s | p50 ms | p99 ms | req per server CPU-s | non-2xx |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in ingest["by_workers"]:
        for name in INGEST_CONTENDERS:
            if name not in entry:  # results written before that contender existed
                continue
            s = entry[name]
            lines.append(
                f"| {entry['workers']} | {name} | {_num(s['ok_rps'])} | {_num(s['p50_ms'], 1)} "
                f"| {_num(s['p99_ms'], 1)} | {_num(s['rps_per_cpu_s'])} | {s['non_2xx']} |"
            )
    lines.append("")
    for entry in ingest["by_workers"]:
        at_rate = entry["fixed_rate"]
        for name in ("cfn", "bare_kafka"):
            h = at_rate[name]
            lines.append(
                f"- {entry['workers']} process(es), {name} at {_num(at_rate['rate'])} req/s: "
                f"p50 {_num(h['p50_ms'], 1)} ms, p99 {_num(h['p99_ms'], 1)} ms "
                f"(server share p99 {_num(h['service_p99_ms'], 1)} ms), sent at "
                f"{_num(h['achieved_send_rate'])} req/s, statuses {h['statuses']}"
                + (
                    f"; p99 of each run: {', '.join(_num(v, 1) for v in h['p99_ms_runs'])} ms"
                    if len(h.get("p99_ms_runs", [])) > 1
                    else ""
                )
            )
    lines.append("")
    return lines


def _pipeline_detail(pipeline: dict[str, Any] | None) -> list[str]:
    if not pipeline:
        return []
    lines = [
        "### Pipeline detail",
        "",
        f"{_num(pipeline['n'])} raw records on {pipeline['partitions']} partitions from "
        f"tests/workload.py ({_num(pipeline['unique_events'])} unique notifications, "
        f"{_num(pipeline['incidents'])} START/END pairs, the rest redeliveries and one-offs), "
        "read from the start by a fresh consumer group each run. One-process events/s run "
        "from the first processed record to the N-th, or to the end of a "
        f"{pipeline.get('box_s', 0):.0f} s time box if that comes first (startup excluded); "
        "two-vs-one uses committed offsets for both sides, since a late joiner makes records "
        "be re-delivered. The worker runs exactly-once (its default), the bare agent "
        "at-least-once (Faust's default). Events per CPU-second divide by the process's own "
        "user+system time over the same span.",
        "",
    ]
    lines.append(
        "| Run | bare agent ev/s | cfn one ev/s | cfn one ev per CPU-s | cfn one (commits) ev/s "
        "| cfn two (commits) ev/s |"
    )
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    problems: list[str] = []
    for i, run in enumerate(pipeline["runs"], 1):
        lines.append(
            f"| {i} | {_num(run['bare'].get('eps'))} | {_num(run['one'].get('eps'))} "
            f"| {_num(run['one'].get('eps_per_cpu_s'))} "
            f"| {_num(run['one'].get('committed_eps'))} | {_num(run['two'].get('committed_eps'))} |"
        )
        for which, label in (("bare", "bare agent"), ("one", "one worker"), ("two", "two workers")):
            if "error" in run[which]:
                problems.append(f"- Run {i}, {label}: **{run[which]['error']}**")
    lines.append("")
    if problems:
        lines += ["Failures (the run's figure is missing from the medians):", "", *problems, ""]
    restore = pipeline.get("restore") or {}
    if restore.get("runs"):
        lines += [
            f"Restore: the changelogs of a fresh app id were filled (in one transaction, as the "
            f"worker writes them) with {_num(restore['dedup_keys'])} dedup ids and "
            f"{_num(restore['incident_keys'])} open incidents made by the real classes; the "
            f"worker logged that it rebuilt exactly those: "
            f"{'yes' if restore['state_recognised'] else 'NO'} (it logged "
            + "; ".join(
                f"{(r['full']['rebuilt'] or {}).get('dedup_keys', '?')} dedup ids and "
                f"{(r['full']['rebuilt'] or {}).get('incident_keys', '?')} incidents"
                for r in restore["runs"]
            )
            + "). Time to /readyz 200: "
            f"{_num(restore['restore_ready_s'], 1)} s, against "
            f"{_num(restore['fresh_ready_s'], 1)} s with empty changelogs "
            f"(median of {len(restore['runs'])}). "
            + (
                f"The restored worker's RSS grew by {_num(restore['worker_rss_bytes_per_key'])} "
                "bytes per key (dedup ids and incidents together) over the empty one's: the "
                "real cost per key in the worker."
                if restore.get("worker_rss_bytes_per_key")
                else "The worker's RSS per restored key is not reported: the keys were not "
                "restored."
            ),
            "",
        ]
    elif restore.get("skipped"):
        lines += [f"Restore time: {restore['skipped']}; the full bench measures it.", ""]
    profile = pipeline.get("profile") or {}
    if profile.get("top"):
        lines += [
            f"Where one worker spends its own time (py-spy, {profile['seconds']:.0f} s at "
            f"100 Hz, {profile['samples']} busy samples; {profile['waiting_samples']} more "
            "were event loops waiting in select and are left out; top 10 by own time):",
            "",
            "| Function | Own share |",
            "| --- | ---: |",
        ]
        for item in profile["top"]:
            lines.append(f"| `{item['function']}` | {item['share'] * 100:.1f}% |")
        lines.append("")
    elif profile.get("skipped"):
        lines += [f"Profile not taken: {profile['skipped']}", ""]
    return lines


def _e2e_modes(e2e: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The end-to-end results by transaction mode (results before both modes were measured
    have only the default's)."""
    if not e2e:
        return []
    by_mode = e2e.get("by_mode")
    return list(by_mode.items()) if by_mode else [(e2e.get("mode", "partition"), e2e)]


MODE_NAMES = {
    "worker": "one producer per worker (CFN_TRANSACTIONS=worker, the default)",
    "partition": "a producer per partition (CFN_TRANSACTIONS=partition)",
}


def _e2e_detail(e2e: dict[str, Any] | None) -> list[str]:
    modes = _e2e_modes(e2e)
    if not modes:
        return []
    lines = [
        "### End to end detail",
        "",
        "Each owner of the worker's transactions (CFN_TRANSACTIONS) has its own worker and "
        "ingest; their points alternate, so a noisy stretch of the machine falls on both.",
        "",
    ]
    for mode, point in modes:
        name = MODE_NAMES[mode]
        lines += [f"#### {name[0].upper()}{name[1:]}", "", *_e2e_mode_detail(point)]
    return lines


def _e2e_mode_detail(e2e: dict[str, Any]) -> list[str]:
    light = e2e.get("light") or {}
    warmup = e2e.get("warmup") or {}
    return [
        f"START/END pairs POSTed by a Go sender (tests/bench/e2e_sender, its own process) "
        f"through `cfn ingest` to one `cfn worker` at {_num(e2e['rate'])} "
        f"POST/s ({e2e['rate_source']}) for {e2e['seconds']:.0f} s; a read_committed consumer "
        f"of the incidents topic saw {e2e['incident_versions_seen']} of {e2e['accepted']} "
        f"expected incident versions ({e2e['missing']} missing, failures {e2e['failures']}). "
        f"From the 202: p50 {_num(e2e['p50_ms'])} ms, p99 {_num(e2e['p99_ms'])} ms, max "
        f"{_num(e2e['max_ms'])} ms; from the send: p50 {_num(e2e['from_send_p50_ms'])} ms, "
        f"p99 {_num(e2e['from_send_p99_ms'])} ms. Median latency of the first quarter of the "
        f"POSTs {_num(e2e.get('first_quarter_p50_ms'))} ms, of the last quarter "
        f"{_num(e2e.get('last_quarter_p50_ms'))} ms: "
        + (
            "**it grows, so the worker did not keep up with this rate** (a backlog built up). "
            if (e2e.get("last_quarter_p50_ms") or 0) > 1.5 * (e2e.get("first_quarter_p50_ms") or 0)
            else "steady, so the worker kept up. "
        )
        + "With exactly-once, records become visible "
        "only when the worker's transaction commits (CFN_COMMIT_INTERVAL, 0.1 s by default), "
        "which sets the floor of these figures.",
        "",
        f"At a light {_num(light.get('rate'))} POST/s (a tenth of that, measured before the "
        f"loaded runs): p50 {_num(light.get('p50_ms'))} ms, p99 {_num(light.get('p99_ms'))} ms "
        f"over {light.get('incident_versions_seen', 0)} incident versions "
        f"({light.get('missing', 0)} missing).",
        "",
        *(
            [
                "Each loaded run's p50 / p99 (ms): "
                + ", ".join(
                    f"{_num(a)} / {_num(b)}"
                    for a, b in zip(e2e.get("run_p50_ms") or [], e2e["run_p99_ms"], strict=False)
                )
                + f"; {e2e.get('missing_all_runs', 0)} incident versions missing over all runs. "
                f"Before any of them, a {_num(warmup.get('seconds'))} s warm-up at the light rate "
                f"(not counted) had p50 {_num(warmup.get('p50_ms'))} ms, p99 "
                f"{_num(warmup.get('p99_ms'))} ms: a fresh worker's first traffic over new "
                "topics.",
                "",
            ]
            if e2e.get("run_p99_ms")
            else []
        ),
        "Each body's `ts` is the second it was sent, as Cloudflare stamps it. Every pair has "
        "the same account, policy and alert type, so the flap detector sees one long episode, "
        "and each incident also gets a version that names it (`flap_id`): more work per pair "
        "than a spread of accounts would make.",
        "",
        *(
            [
                f"In the run shown, the worker committed {e2e['commit_rounds']} rounds of "
                f"transactions, {_num(e2e.get('commit_round_mean_ms'))} ms each on average; the "
                "worst latency of each second of sending (ms): "
                + ", ".join(_num(x) for x in e2e.get("max_ms_by_second") or [])
                + ".",
                "",
            ]
            if e2e.get("commit_rounds") is not None
            else []
        ),
    ]


def _memory_detail(memory: dict[str, Any] | None, pipeline: dict[str, Any] | None) -> list[str]:
    if not memory:
        return []
    restore = (pipeline or {}).get("restore") or {}
    real = (
        f" The worker itself, measured in the pipeline section's restore, grew by "
        f"{_num(restore['worker_rss_bytes_per_key'])} bytes per restored key (dedup ids and "
        "incidents together)."
        if restore.get("worker_rss_bytes_per_key")
        else " Restore time and the worker's own RSS per key are measured in the pipeline "
        "section (not run in this invocation)."
    )
    return [
        "### Memory detail",
        "",
        f"RSS growth (VmRSS) of a fresh process filling {_num(memory['keys'])} keys into "
        "`Deduplicator` (store plus expiry index) and `Correlator` (one open incident per "
        "START: its compact state, which is also its timer-heap entry), in the worker's own "
        "tables (`processors/changelog.py` ChangelogTable, the incidents one with its changelog "
        "format) drained every 1,000 keys as commits do, every string and number a fresh "
        "object as parsing makes them. "
        f"Fill speed relative to the plain dict: dedup "
        f"{_num(memory['dedup']['ratio_speed_vs_dict'], 2)}, correlate "
        f"{_num(memory['correlate']['ratio_speed_vs_dict'], 2)}." + real,
        "",
    ]


def _security_detail(security: dict[str, Any] | None) -> list[str]:
    if not security:
        return []
    ingest, worker = security["ingest"], security["worker"]
    runs = ", ".join(
        _num(ratio_of(r["sasl_ssl"]["ok_rps"], r["plaintext"]["ok_rps"]), 2) for r in ingest["runs"]
    )
    return [
        "### Security detail",
        "",
        f"{security['mechanism']}, against an open PLAINTEXT listener of the same broker (same "
        "JVM, disk and log). Ingest: one `cfn ingest` process per listener, wrk at fixed "
        f"concurrency, rounds alternating; ratio per round {runs}. Server CPU per request: "
        f"{_num(ingest['sasl_ssl_cpu_us_per_request'])} us over SASL_SSL, "
        f"{_num(ingest['plaintext_cpu_us_per_request'])} us over PLAINTEXT. Worker: one "
        f"`cfn worker` over each listener through the same {_num(worker['n'])} pre-filled "
        "records (a fresh group each run); committed events/s ratio "
        f"{_num(worker['ratio_committed_sasl_ssl_vs_plaintext'], 2)}.",
        "",
    ]


def ratio_of(a: Any, b: Any) -> float | None:
    return None if not a or not b else float(a) / float(b)


def _machine(machine: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    return [
        "### Machine",
        "",
        f"- CPU: {machine['cpu_model']}; nproc: {machine['nproc']}; "
        f"load average at start: {' '.join(machine['loadavg_at_start'])}",
        f"- Kernel {machine['kernel']}; Python {machine['python']}; Apache Kafka "
        f"{machine['kafka']} ({machine['java']}); {machine['wrk']}",
        f"- {packages}",
        "",
        "```",
        "$ free -g",
        machine["free_g"],
        "```",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results.json")
    parser.add_argument("--doc", type=Path, help="also write the results page here")
    args = parser.parse_args(argv)
    results = jsonio.loads(args.results.read_bytes())
    write(results, args.results.parent)
    if args.doc is not None:
        write_doc(results, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
