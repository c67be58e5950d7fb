"""Flapping end to end on the real broker: incidents of one flap key on several raw partitions
are repartitioned by flap key; an episode starts, the worker is SIGKILLed in the middle of it,
and after the restart there is exactly one `start` and one `end` (read_committed), every cycle's
incident carries the `flap_id`, no incident version is written twice, and a shadow replay of the
same range writes the same episode."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cfn.config import topic_names
from cfn.topics import ensure_topics
from tests.kafka_util import caught_up, produce_with_headers, run
from tests.payloads import alert, encode
from tests.records_check import read_checked, wait_for_records
from tests.services import shadow_replay, start_worker

pytestmark = pytest.mark.broker

KIND = "load_balancing_health_alert"
ACCOUNT = "acc-flap"
PARTITIONS = 4
# Openings go to their alert type's partition, whose clock the events' own event time moves
# (idle ticks are off: wall time plays no part).
POLICY = "pol-flap"
GAP = 60  # seconds between two openings of the flap key
CYCLES = 8  # openings in the episode; the third starts it
BEFORE_KILL = 4
QUIET = 600
LATENESS = 600  # more than the event time a burst of test records spans: none arrives late
WORKER_ENV = {
    "CFN_RATE_WINDOWS": "60s",
    "CFN_RATE_LATENESS": f"{LATENESS}s",
    "CFN_RATE_IDLE_AFTER": "24h",
    "CFN_FLAP_MIN_CYCLES": "3",
    "CFN_FLAP_WINDOW": "10m",
    "CFN_FLAP_QUIET": f"{QUIET}s",
}


def opening_ts(base: int, k: int) -> int:
    """Cycles 0-3 before the SIGKILL, 4-7 after, each past the clock the first part left."""
    return base + k * GAP + (120 if k >= BEFORE_KILL else 0)


def records(base: int, cycles: range) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """A START and, 30 s later, its END for each cycle: each its own incident (correlation id),
    so they hash to different raw partitions; all of one flap key."""
    items = []
    for k in cycles:
        start = opening_ts(base, k)
        for event, ts in (
            ("ALERT_STATE_EVENT_START", start),
            ("ALERT_STATE_EVENT_END", start + 30),
        ):
            body = alert(
                account=ACCOUNT, correlation=f"flap-{k}", event=event, ts=ts, alert_type=KIND
            )
            body["policy_id"] = POLICY
            headers = [("cfn-tenant", b"default"), ("cfn-received-at", str(ts * 1000).encode())]
            items.append((f"default|{ACCOUNT}|flap-{k}".encode(), encode(body), headers))
    return items


def later_event(ts: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A notification of the same type from another account, with no incident: it moves the
    rate partition's event time past the episode's end."""
    body = alert(account="acc-other", correlation=None, ts=ts, alert_type=KIND)
    headers = [("cfn-tenant", b"default"), ("cfn-received-at", str(ts * 1000).encode())]
    return (f"default|acc-other|-|{KIND}|".encode(), encode(body), headers)


def move_event_time(bootstrap: str, topic: str, incidents_topic: str, count: int, ts: int) -> None:
    """Once `count` incidents are in (their openings are committed with them), send a later
    notification: event time, and so the clock that judges the openings, moves to `ts`.
    Sent together with the openings, it could overtake them through another raw partition
    and make them late (judged in arrival order, like late rate events)."""
    deadline = time.monotonic() + 90
    while len({i["incident_id"] for i in read(bootstrap, incidents_topic, "incidents")}) < count:
        assert time.monotonic() < deadline, "the openings were not all processed"
        time.sleep(0.5)
    time.sleep(1)
    run(produce_with_headers(bootstrap, topic, [later_event(ts)]))


def read(bootstrap: str, topic: str, role: str) -> list[dict[str, Any]]:
    return read_checked(bootstrap, topic, role)


def test_a_flap_episode_survives_a_kill_and_replays_the_same(
    kafka: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique("fl").replace("-", "") + "."
    app_id = unique("fl-app")
    names = topic_names(prefix)
    run(ensure_topics(kafka, list(names.items()), PARTITIONS, 1))
    now = int(time.time())
    base = now - now % 60 - 7200

    worker = start_worker(tmp_path, kafka, prefix, app_id, WORKER_ENV, partitions=PARTITIONS)
    try:
        run(produce_with_headers(kafka, names["raw"], records(base, range(BEFORE_KILL))))
        judged = opening_ts(base, BEFORE_KILL - 1) + LATENESS + 60
        move_event_time(kafka, names["raw"], names["incidents"], BEFORE_KILL, judged)
        started = wait_for_records(kafka, names["flaps"], "flaps", bool, 90)
        worker.kill()  # SIGKILL in the middle of the episode
    finally:
        worker.stop()
    assert [(f["state"], f["cycles"]) for f in started] == [("start", 3)]

    run(produce_with_headers(kafka, names["raw"], records(base, range(BEFORE_KILL, CYCLES))))
    worker = start_worker(tmp_path, kafka, prefix, app_id, WORKER_ENV, partitions=PARTITIONS)
    try:
        last = opening_ts(base, CYCLES - 1)
        move_event_time(
            kafka, names["raw"], names["incidents"], CYCLES, last + QUIET + LATENESS + 60
        )
        wait_for_records(kafka, names["flaps"], "flaps", lambda found: len(found) >= 2, 90)
        deadline = time.monotonic() + 60
        while True:  # the marks travel back to the incidents' partitions
            incidents = read(kafka, names["incidents"], "incidents")
            marked = {i["incident_id"] for i in incidents if i["flap_id"]}
            if len(marked) >= CYCLES or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # Anything more would be a duplicate: read once the worker has committed every input.
        caught_up(kafka, app_id, names)
        flaps = read(kafka, names["flaps"], "flaps")
        incidents = read(kafka, names["incidents"], "incidents")
    finally:
        worker.stop()

    assert [(f["state"], f["cycles"]) for f in flaps] == [("start", 3), ("end", CYCLES)]
    flap_id = flaps[0]["flap_id"]
    assert flaps[1]["flap_id"] == flap_id
    assert flaps[0]["started_at"] == opening_ts(base, 2)
    assert flaps[1]["ended_at"] == opening_ts(base, CYCLES - 1) + QUIET
    assert flaps[0]["account_id"] == ACCOUNT and flaps[0]["policy_id"] == POLICY
    versions = [(i["incident_id"], i["version"]) for i in incidents]
    assert len(versions) == len(set(versions)), "an incident version was written twice"
    by_incident: dict[str, dict[str, Any]] = {}
    for incident in incidents:
        if incident["version"] > by_incident.get(incident["incident_id"], {}).get("version", 0):
            by_incident[incident["incident_id"]] = incident
    assert len(by_incident) == CYCLES
    assert all(i["flap_id"] == flap_id for i in by_incident.values()), by_incident
    assert {i["state"] for i in by_incident.values()} == {"resolved"}

    shadow_replay(kafka, prefix, WORKER_ENV, PARTITIONS)
    assert read(kafka, f"replay.{prefix}flaps", "flaps") == flaps
    shadow = read(kafka, f"replay.{prefix}incidents", "incidents")
    assert {i["incident_id"] for i in shadow if i["flap_id"] == flap_id} == set(by_incident)
