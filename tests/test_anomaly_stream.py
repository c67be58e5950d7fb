"""Rate anomalies end to end on the real broker: the worker opens one on a spike, a SIGKILL in
the middle of the episode changes nothing (one `open`, one `closed`, read_committed), and a
shadow replay of the same range writes the same records."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cfn.config import OUTPUT_ROLES, topic_names
from cfn.schemas import jsonio
from cfn.topics import ensure_topics
from tests.kafka_util import caught_up, produce_with_headers, run
from tests.payloads import alert, encode
from tests.records_check import read_checked, wait_for_records
from tests.services import shadow_replay, start_worker

pytestmark = pytest.mark.broker

W = 60  # the rate and anomaly window of this test, seconds
KIND = "http_alert_origin_error"
ACCOUNT = "acc-anomaly"
# Counts per window: a warm-up at 10, a spike at 80 (8x), then calm again. The episode opens
# when window 10 is final (the watermark past window 11's end plus the lateness) and closes
# with the third calm window after it (13).
COUNTS = [10] * 10 + [80] + [10] * 6
KILL_AFTER = 13  # windows 0..12 are sent before the SIGKILL: the spike is judged, not the end
WORKER_ENV = {
    "CFN_RATE_WINDOWS": f"{W}s",
    "CFN_RATE_LATENESS": f"{W}s",
    "CFN_RATE_IDLE_AFTER": "1s",
    "CFN_ANOMALY_WINDOW": f"{W}s",
    "CFN_ANOMALY_SPAN": "5",
    "CFN_ANOMALY_WARMUP": "5",
}


def bodies(base: int, windows: range) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """Raw records as the ingest writes them, in event-time order, one key (one partition)."""
    items = []
    for window in windows:
        for i in range(COUNTS[window]):
            ts = base + window * W + i % W
            body = {**alert(account=ACCOUNT, correlation=None, alert_type=KIND, ts=ts)}
            body["text"] = f"window {window} event {i}"  # each its own notification
            received = (base + window * W + i % W) * 1000
            headers = [("cfn-tenant", b"default"), ("cfn-received-at", str(received).encode())]
            items.append((f"default|{ACCOUNT}|-|{KIND}|".encode(), encode(body), headers))
    return items


def anomalies(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return read_checked(bootstrap, topic, "anomalies")


def test_an_anomaly_survives_a_kill_mid_episode_and_replays_the_same(
    kafka: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique("an").replace("-", "") + "."
    app_id = unique("an-app")
    names = topic_names(prefix)
    run(ensure_topics(kafka, list(names.items()), 2, 1))
    now = int(time.time())
    base = now - now % W - (len(COUNTS) + 5) * W  # every window well in the past

    worker = start_worker(tmp_path, kafka, prefix, app_id, WORKER_ENV, partitions=2)
    try:
        run(produce_with_headers(kafka, names["raw"], bodies(base, range(KILL_AFTER))))
        opened = wait_for_records(kafka, names["anomalies"], "anomalies", bool, 90)
        worker.kill()  # SIGKILL, mid-episode: open, not yet closed
    finally:
        worker.stop()
    assert [a["state"] for a in opened] == ["open"]
    assert opened[0]["window_start"] == base + 10 * W and opened[0]["count"] == 80

    run(produce_with_headers(kafka, names["raw"], bodies(base, range(KILL_AFTER, len(COUNTS)))))
    worker = start_worker(tmp_path, kafka, prefix, app_id, WORKER_ENV, partitions=2)
    try:
        live = wait_for_records(
            kafka, names["anomalies"], "anomalies", lambda found: len(found) >= 2, 90
        )
        # Anything more would be a duplicate: read once the worker has committed every input.
        caught_up(kafka, app_id, names)
        live = anomalies(kafka, names["anomalies"])
    finally:
        worker.stop()
    assert [(a["state"], (a["window_start"] - base) // W) for a in live] == [
        ("open", 10),
        ("closed", 13),
    ]
    assert live[0]["anomaly_id"] == live[1]["anomaly_id"]
    assert live[1]["peak_count"] == 80 and live[1]["windows"] == 4

    shadow_replay(kafka, prefix, WORKER_ENV, 2)
    assert "anomalies" in OUTPUT_ROLES
    shadow = anomalies(kafka, f"replay.{prefix}anomalies")
    assert shadow == live, jsonio.dumps({"shadow": shadow, "live": live}).decode()
