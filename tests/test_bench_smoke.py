"""Keeps the benchmark harness (tests/bench) from rotting: its cheapest sections, tiny sizes.

It checks that the harness measures something real (finite positive ratios, every server
answering 2xx, the files it promises), not how fast cfn is. The quick sections (marked `bench`)
run in `make bench-quick` and CI, not in `make test`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from cfn.schemas import jsonio
from cfn.schemas.keys import incident_key
from tests.bench.cli import run_bench
from tests.bench.core import Sizes
from tests.bench.ingest_bench import CONTENDERS, GO_KEYED_TOPIC, GRANIAN_TOPIC, median_run
from tests.bench.load import parse_wrk, webhook_body
from tests.kafka_util import read_to_end, run

pytestmark = pytest.mark.broker

WRK_REPORT = """Running 1s test @ http://127.0.0.1:1/webhooks/cloudflare
  2 threads and 8 connections
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.31s
  1500 requests in 1.00s, 200.00KB read
  Non-2xx or 3xx responses: 12
Requests/sec:   1500.00
"""


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_parse_wrk_reads_units_and_failures() -> None:
    result = parse_wrk(WRK_REPORT)
    assert result.requests == 1500 and result.non_2xx == 12
    assert result.ok_rps == pytest.approx(1488.0)
    assert result.p50_ms == pytest.approx(0.812)
    assert result.p99_ms == pytest.approx(2310.0)


def test_webhook_body_is_realistic() -> None:
    body = webhook_body("corr-1")
    assert 600 <= len(body) <= 1024
    assert jsonio.loads(body)["alert_correlation_id"] == "corr-1"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.bench
def test_quick_ingest_and_memory_sections(kafka: str, tmp_path: Path) -> None:
    sizes = dataclasses.replace(
        Sizes.fast(),
        wrk_duration=1.0,
        wrk_connections=16,
        ingest_workers=(1,),
        fixed_rate_duration=1.0,
        memory_keys=5_000,
    )
    results = run_bench(
        sizes,
        ["ingest", "memory"],
        out_dir=tmp_path,
        command="pytest tests/test_bench_smoke.py",
        bootstrap=kafka,
    )

    written = jsonio.loads((tmp_path / "results.json").read_bytes())
    assert set(written) >= {"command", "quick", "machine", "sections", "targets", "date"}
    assert written["quick"] is True and written["machine"]["nproc"]
    sections = written["sections"]
    assert set(sections) == {"ingest", "memory"}
    assert not any("error" in s for s in sections.values()), results["sections"]

    (entry,) = sections["ingest"]["by_workers"]
    for name in CONTENDERS:
        assert positive(entry[name]["ok_rps"]), entry[name]
        assert entry[name]["non_2xx"] == 0 and entry[name]["socket_errors"] == 0
        assert positive(entry[name]["p99_ms"])
    assert positive(entry["ratio_cfn_vs_bare_kafka"])
    assert positive(entry["ratio_bare_kafka_vs_bare_http"])
    assert positive(entry["ratio_cfn_vs_go_peer"])
    assert positive(entry["ratio_cfn_vs_go_keyed"])
    # The keyed Go peer keys its records exactly as cfn keys cfn.raw, and so spreads them.
    keyed = run(read_to_end(kafka, GO_KEYED_TOPIC))
    assert keyed
    for record in keyed[:500]:
        assert record.key == incident_key("default", jsonio.loads(record.value)), record.key
    assert len({record.partition for record in keyed}) > 1
    # cfn's app on granian answered its 202s after writing them as cfn does.
    assert positive(entry["ratio_granian_cfn_vs_cfn"])
    assert positive(entry["ratio_granian_bare_vs_bare_http"])
    assert positive(entry["ratio_granian_kafka_vs_bare_kafka"])
    on_granian = run(read_to_end(kafka, GRANIAN_TOPIC))
    assert len(on_granian) >= entry["granian_cfn"]["ok_rps"] * sizes.wrk_duration * 0.9
    record = on_granian[0]
    assert record.key == incident_key("default", jsonio.loads(record.value))
    for name in ("cfn", "bare_kafka"):
        half = entry["fixed_rate"][name]
        assert half["ok"] == half["sent"] > 0, half
        assert positive(half["p99_ms"])

    memory = sections["memory"]
    for kind in ("dict", "dedup", "correlate"):
        assert memory[kind]["live"] == 5_000
        assert positive(memory[kind]["bytes_per_key"])
    assert positive(memory["dedup"]["ratio_bytes_vs_dict"])

    names = {t["name"] for t in written["targets"]}
    assert "ingest req/s cfn / bare+Kafka, 1 process(es)" in names
    assert "memory bytes per dedup key" in names
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith("## Performance")
    assert "quick mode" in markdown and "pytest tests/test_bench_smoke.py" in markdown
    assert "| Ingest req/s, 1 process(es)" in markdown


@pytest.mark.broker
@pytest.mark.bench
def test_quick_security_section(tmp_path: Path) -> None:
    """The SASL_SSL-against-PLAINTEXT section runs on its own secured broker and reports both
    contenders and their ratios."""
    sizes = dataclasses.replace(
        Sizes.fast(), wrk_duration=1.0, wrk_connections=16, pipeline_n=10_000
    )
    results = run_bench(
        sizes, ["security"], out_dir=tmp_path, command="pytest tests/test_bench_smoke.py"
    )
    security = results["sections"]["security"]
    assert "error" not in security, security.get("traceback")
    ingest, worker = security["ingest"], security["worker"]
    for name in ("plaintext", "sasl_ssl"):
        (run,) = [r[name] for r in ingest["runs"]]
        assert positive(run["ok_rps"]) and run["non_2xx"] == 0, run
        assert positive(worker[f"{name}_eps"])
    assert positive(ingest["ratio_sasl_ssl_vs_plaintext"])
    assert positive(worker["ratio_sasl_ssl_vs_plaintext"])
    markdown = (tmp_path / "results.md").read_text()
    assert "| Ingest req/s over SASL_SSL (SCRAM) vs PLAINTEXT" in markdown
    assert "### Security detail" in markdown


def test_latency_reports_the_run_with_the_median_tail() -> None:
    runs = [{"p99_ms": 900.0, "n": 1}, {"p99_ms": 12.0, "n": 2}, {"p99_ms": 15.0, "n": 3}]
    assert median_run(runs) == {"p99_ms": 15.0, "n": 3}
    assert median_run([{"p99_ms": None}, {"p99_ms": 5.0}]) == {"p99_ms": 5.0}
    assert median_run([{"p99_ms": 7.0}]) == {"p99_ms": 7.0}


@pytest.mark.bench
def test_quick_partitions_section(kafka: str, tmp_path: Path) -> None:
    """The same records over 12 and 96 partitions, with a producer per partition and with one
    per worker (and over 96 at the former 0.2 s commit interval): every contender processes them
    all and is timed to ready, on its first start and on a restart (at this size the rates are
    too quick to time reliably; their values are make bench's business)."""
    sizes = dataclasses.replace(Sizes.fast(), partitions_n=3_000, pipeline_box_s=15.0)
    results = run_bench(
        sizes,
        ["partitions"],
        out_dir=tmp_path,
        command="pytest tests/test_bench_smoke.py",
        bootstrap=kafka,
    )
    section = results["sections"]["partitions"]
    assert "error" not in section, section
    (run,) = section["runs"]
    for name in ("p12", "p96", "p12_worker", "p96_worker", "p96_slow"):
        assert run[name]["complete"] is True, run[name]
        assert positive(run[name]["ready_s"])
    for name in ("p12", "p96", "p12_worker", "p96_worker"):
        assert positive(run[name]["restart_s"])
    for ratio in ("ready", "restart"):
        assert positive(section[f"ratio_{ratio}_96_vs_12"])
        assert positive(section[f"ratio_{ratio}_96_vs_12_worker"])
    # An events/s ratio: at this size a run may finish between two samples and have no rate
    # (processed_rate), so it is checked when there is one.
    interval = section["ratio_96_interval_01_vs_02"]
    assert interval is None or positive(interval), interval
    names = {t["name"] for t in results["targets"]}
    for mode in ("a producer per partition", "one per worker"):
        assert f"one worker's events/s over 96 partitions / over 12 ({mode})" in names
        for start in ("first start", "restart"):
            assert (
                f"one worker's time to ready over 96 partitions / over 12, {start} ({mode})"
                in names
            )


@pytest.mark.bench
def test_quick_e2e_section(kafka: str, tmp_path: Path) -> None:
    """The Go sender (tests/bench/e2e_sender) posts every pair through a real ingest and worker,
    and the bench's consumer sees every incident version it was answered 202 for."""
    sizes = dataclasses.replace(Sizes.fast(), e2e_duration=2.0)
    results = run_bench(
        sizes,
        ["e2e"],
        out_dir=tmp_path,
        command="pytest tests/test_bench_smoke.py",
        bootstrap=kafka,
        e2e_rate=40.0,
    )
    section = results["sections"]["e2e"]
    assert "error" not in section, section
    # Both owners of the transactions, each through its own worker; the default's on top.
    assert set(section["by_mode"]) == {"partition", "worker"}
    assert section["mode"] == "worker"
    for mode, result in section["by_mode"].items():
        assert result["mode"] == mode
        for point in (result, result["light"], result["warmup"]):
            assert point["failures"] == {}, point
            assert point["posts"] == point["accepted"] > 0, point
            assert point["missing"] == 0 and point["incident_versions_seen"] == point["accepted"]
            assert positive(point["p99_ms"]) and positive(point["from_send_p99_ms"])
            assert point["from_send_p50_ms"] >= point["p50_ms"]
            assert point["commit_rounds"] > 0, point
        assert result["rate"] == 40.0 and result["rate_source"] == "set with --e2e-rate"
    text = (tmp_path / "results.md").read_text()
    assert "### End to end detail" in text
    assert "one producer per worker (CFN_TRANSACTIONS=worker, the default)" in text
    assert "a producer per partition (CFN_TRANSACTIONS=partition)" in text
