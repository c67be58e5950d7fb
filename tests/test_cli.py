"""The `cfn` command line against the real broker: send -> tail, replay, catalog, run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.schemas import jsonio
from tests.conftest import free_port_block
from tests.kafka_util import drain, run
from tests.payloads import alert, encode
from tests.records_check import checked
from tests.services import Process, cfn_env, free_port, start_ingest, start_worker

pytestmark = pytest.mark.broker

EXAMPLES = Path(__file__).parent / "data" / "examples"
SECRET = "cli-test-secret-0123"


def cfn(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfn", *args],
        capture_output=True,
        text=True,
        env=cfn_env(env or {}),
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(
    kafka: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Process, Process]]:
    tmp = tmp_path_factory.mktemp("cli")
    token = uuid.uuid4().hex[:8]
    prefix = f"c{token}."
    worker = start_worker(tmp, kafka, prefix, f"cli-{token}", {"CFN_RATE_IDLE_AFTER": "1s"})
    ingest = start_ingest(tmp, kafka, prefix, {"CFN_INGEST_SECRET": SECRET})
    try:
        yield prefix, ingest, worker
    finally:
        ingest.stop()
        worker.stop()


def test_send_then_tail_end_to_end(kafka: str, stack: tuple[str, Process, Process]) -> None:
    prefix, ingest, _worker = stack
    url = f"http://127.0.0.1:{ingest.port}/webhooks/cloudflare"
    sent = cfn("send", str(EXAMPLES), "--url", url, "--secret", SECRET)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.strip().splitlines()
    assert len(lines) == len(list(EXAMPLES.glob("*.json")))
    assert all(": 202 " in line for line in lines), sent.stdout

    env = {"CFN_KAFKA_BOOTSTRAP": kafka, "CFN_TOPIC_PREFIX": prefix}
    incidents = cfn("tail", "incidents", "--from-beginning", "--max", "2", "--idle", "60", env=env)
    assert incidents.returncode == 0, incidents.stderr
    assert '"state": "open"' in incidents.stdout and '"state": "resolved"' in incidents.stdout
    assert '"duration_s": 420' in incidents.stdout
    table = cfn("tail", "incident-state", "--from-beginning", "--max", "2", "--idle", "30", env=env)
    assert '"state": "open"' in table.stdout and '"state": "resolved"' in table.stdout

    events = cfn("tail", "events", "--from-beginning", "--idle", "3", env=env)
    blocks = [b for b in events.stdout.split("--- ") if b.strip()]
    # 7 files: one redelivery dropped, one malformed to the DLQ -> 5 events.
    assert len(blocks) == 5, events.stdout
    dlq = cfn("tail", "dlq", "--from-beginning", "--max", "1", "--idle", "30", env=env)
    assert '"reason": "bad_ts"' in dlq.stdout

    wrong = cfn("send", str(EXAMPLES / "05-ddos-l7.json"), "--url", url, "--secret", "nope")
    assert wrong.returncode == 1 and ": 401 " in wrong.stdout


def test_replay_reproduces_live_ids(
    kafka: str, stack: tuple[str, Process, Process], tmp_path: Path
) -> None:
    prefix, ingest, _worker = stack
    # Fresh bodies stamped now: the live worker's watermark follows wall time, so days-old
    # example timestamps would only count as dropped-late there.
    now = int(time.time())
    kind = f"replay_type_{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "fresh"
    folder.mkdir()
    for i, (event, ts) in enumerate(
        [("ALERT_STATE_EVENT_START", now - 30), ("ALERT_STATE_EVENT_END", now - 5)]
    ):
        body = alert(
            correlation=f"replay-{now}", event=event, ts=ts, account="replay-acc", alert_type=kind
        )
        (folder / f"{i}.json").write_bytes(encode(body))
    url = f"http://127.0.0.1:{ingest.port}/webhooks/cloudflare"
    assert cfn("send", str(folder), "--url", url, "--secret", SECRET).returncode == 0

    def ids(topic_prefix: str, role: str) -> set[Any]:
        records = checked(
            role, [r.value for r in run(drain(kafka, f"{topic_prefix}{role}", settle=2))]
        )
        if role == "events":
            return {r["event_id"] for r in records}
        if role == "incidents":
            return {(r["incident_id"], r["version"]) for r in records}
        # Rates of this test's own type only: the module's example bodies carry days-old
        # timestamps, which live counts or drops depending on when its idle watermark moved.
        return {r["rate_id"] for r in records if r["alert_type"] == kind}

    deadline = time.monotonic() + 150  # generous: CI machines are small and busy
    while len(ids(prefix, "incidents")) < 2 or not ids(prefix, "rates"):
        assert time.monotonic() < deadline, "the live run produced no incidents or rates"
        time.sleep(1)
    shadow = f"replay.{prefix}"  # the default output prefix: the module's prefix is its own
    env = {"CFN_KAFKA_BOOTSTRAP": kafka, "CFN_TOPIC_PREFIX": prefix}
    replayed = cfn("replay", "--from", "2000-01-01T00:00:00Z", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "raw records -> " in replayed.stdout and f"into {shadow}*" in replayed.stdout
    assert ids(shadow, "events") == ids(prefix, "events")
    assert ids(shadow, "incidents") == ids(prefix, "incidents")
    live_rates, replay_rates = ids(prefix, "rates"), ids(shadow, "rates")
    assert live_rates <= replay_rates, (live_rates - replay_rates, prefix, shadow)


def test_catalog_command() -> None:
    known = cfn("catalog", "advanced_ddos_attack_l4_alert")
    assert known.returncode == 0 and "Advanced Layer 3/4 DDoS Attack Alert" in known.stdout
    unknown = cfn("catalog", "no_such_type")
    assert unknown.returncode == 1 and "unknown" in unknown.stdout.lower()
    listing = cfn("catalog")
    assert listing.stdout.count("\n") >= 81


def test_make_run_starts_prints_endpoints_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ingest_port, admin_port, metrics_port = free_port(), free_port(), free_port()
    env = cfn_env(
        {
            "CFN_INGEST_PORT": str(ingest_port),
            "CFN_INGEST_ADMIN_PORT": str(admin_port),
            "CFN_WORKER_METRICS_PORT": str(metrics_port),
            "CFN_PARTITIONS": "2",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfn", "run", "--kafka-port", str(free_port_block(1))],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "Ctrl-C stops everything" in line or proc.poll() is not None:
            break
    output = "".join(seen)
    assert f"http://127.0.0.1:{ingest_port}/webhooks/cloudflare" in output, output
    assert f"http://127.0.0.1:{admin_port}/metrics" in output, output  # not the public port
    secret = (tmp_path / ".local" / "secret").read_text().strip()
    assert f"cf-webhook-auth: {secret}" in output
    body = (EXAMPLES / "05-ddos-l7.json").read_bytes()
    from tests.services import request

    assert (
        request(
            ingest_port, "POST", "/webhooks/cloudflare", body, {"cf-webhook-auth": secret}
        ).status
        == 202
    )
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, rest
    assert "cfn run: stopped" in rest
    assert (tmp_path / ".local" / "kafka").is_dir()
    assert jsonio.loads(body)["alert_type"] == "dos_attack_l7"
