"""The nemesis's own logic, without a broker: schedules follow the seed, and the checker finds
each kind of broken history (the ones a broken build would write: dedup off, a lost record, a
skipped version, a stale table, a miscount, a lying /readyz, a crash)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from cfn.schemas import jsonio
from cfn.schemas.payload import Notification, parse
from tests.nemesis.checker import History, RawRecord, check
from tests.nemesis.load import plan
from tests.nemesis.report import BEGIN, END, keep, load, load_all, render, write_doc
from tests.nemesis.schedule import WEIGHTS, draw

EPOCH = 1_765_000_000


def test_a_schedule_is_its_seed() -> None:
    assert draw(11, 180) == draw(11, 180)
    assert draw(11, 180) != draw(12, 180)
    kinds = {fault.kind for seed in range(20) for fault in draw(seed, 180)}
    assert kinds == set(WEIGHTS), "every kind is drawn by some seed"
    for seed in range(20):
        faults = draw(seed, 60)
        assert all(f.at >= 5 and f.at + f.duration <= 60 for f in faults), faults
        for a in faults:  # no two faults hold the same proxy, node or process at once
            for b in faults:
                if a is not b and set(a.claims()) & set(b.claims()):
                    assert a.busy_until <= b.at or b.busy_until <= a.at, (a, b)


def test_the_load_is_its_seed_and_several_tenants() -> None:
    sends = plan(3, 30, 10, ["a", "b", "c"], EPOCH)
    assert sends == plan(3, 30, 10, ["a", "b", "c"], EPOCH)
    assert {s.tenant for s in sends} == {"a", "b", "c"}
    assert {s.kind for s in sends} == {"start", "end", "one_off", "redelivery"}


def clean_history() -> History:
    """What a correct pipeline makes of a small load where every delivery was accepted."""
    sends = plan(5, 20, 10, ["acme", "globex"], EPOCH)
    answers, raw = [], []
    events: dict[str, dict[str, Any]] = {}
    opened: dict[tuple[str, str | None, str], list[str]] = {}
    for i, send in enumerate(sends):
        answers.append(
            {"item": i, "tenant": send.tenant, "body": send.body, "status": 202,
             "request_id": f"r{i}", "retry_after": None}
        )  # fmt: skip
        raw.append(RawRecord(f"r{i}", send.tenant, send.body.encode()))
        n = parse(send.body.encode(), send.tenant, 0)
        assert isinstance(n, Notification)
        events[n.event_id] = {
            "event_id": n.event_id, "kind": n.kind, "alert_type": n.alert_type,
            "account_id": n.account_id, "ts": n.ts,
        }  # fmt: skip
        if n.correlation_id:
            opened.setdefault((n.tenant, n.account_id, n.correlation_id), []).append(str(n.event))
    incidents: list[dict[str, Any]] = []
    for number, ((tenant, account, corr), seen) in enumerate(sorted(opened.items(), key=repr)):
        base = {"incident_id": f"in{number}", "tenant": tenant, "account_id": account}
        base["correlation_id"] = corr
        incidents.append({**base, "version": 1, "state": "open"})
        if "end" in seen:
            incidents.append({**base, "version": 2, "state": "resolved"})
    latest = {i["incident_id"]: i for i in incidents}  # versions come in order
    counts: dict[str, int] = {}
    for event in events.values():
        counts[event["alert_type"]] = counts.get(event["alert_type"], 0) + 1
    rates = [
        {"rate_id": f"rt{t}", "revision": 1, "scope": "type", "alert_type": t,
         "account_id": None, "window_start": EPOCH - 60, "window_end": EPOCH + 3600, "count": c}
        for t, c in counts.items()
    ]  # fmt: skip
    return History(
        answers, raw, list(events.values()), incidents, list(latest.items()), rates,
        ready=[("ingest-0", 100.0, 200), ("ingest-0", 110.0, 503)], outages=[(105.0, 120.0)],
        final_ready={"ingest-0": 200, "worker-0": 200},
    )  # fmt: skip


def test_a_clean_history_passes() -> None:
    assert check(clean_history()) == []


def broken(what: str) -> History:
    h = clean_history()
    if what == "dedup off":  # a redelivery became a second event
        h.events.append(dict(h.events[0]))
    elif what == "a 202 not in cfn.raw":
        h.raw = h.raw[1:]
    elif what == "a notification lost downstream":
        h.events = h.events[1:]
    elif what == "another 2xx":
        h.answers.append({**h.answers[0], "status": 200})
    elif what == "a version skipped":
        h.incidents = [{**i, "version": 3} if i["version"] == 2 else i for i in h.incidents]
    elif what == "an END not applied":
        h.incidents = [i for i in h.incidents if i["version"] == 1]
    elif what == "a stale table":
        h.incident_state = h.incident_state[1:]
    elif what == "a miscounted window":
        h.rates[0] = {**h.rates[0], "count": h.rates[0]["count"] + 1}
    elif what == "a crash":
        h.exits = ["worker-1 exited 1"]
    elif what == "a lying /readyz":
        h.ready.append(("ingest-1", 112.0, 200))
    elif what == "stuck after healing":
        h.unsettled = ["300s after healing: still behind on raw"]
    elif what == "not ready after healing":
        h.final_ready["worker-0"] = 503
    return h


CAUGHT_BY = {
    "dedup off": "events_exactly_once",
    "a 202 not in cfn.raw": "accepted_in_raw",
    "a notification lost downstream": "events_exactly_once",
    "another 2xx": "no_other_2xx",
    "a version skipped": "incident_versions",
    "an END not applied": "incident_state_agrees",
    "a stale table": "incident_state_table",
    "a miscounted window": "rates_recount",
    "a crash": "no_manual_restart",
    "a lying /readyz": "readyz_truthful",
    "not ready after healing": "readyz_truthful",
    "stuck after healing": "settles",
}


@pytest.mark.parametrize("what", sorted(CAUGHT_BY))
def test_the_checker_finds_a_broken_history(what: str) -> None:
    found = check(broken(what))
    assert CAUGHT_BY[what] in {v.check for v in found}, found
    assert all(v.render().startswith("VIOLATION ") for v in found)


def test_an_answer_record_round_trips() -> None:
    """The client writes answers as JSON lines; the checker reads them back as dicts."""
    from tests.nemesis.load import Answer

    answer = Answer(1, 0, 0, "acme", "{}", 202, "id", None, 1.0, 2.0, None)
    assert jsonio.loads(jsonio.dumps(dataclasses.asdict(answer)))["request_id"] == "id"


def test_the_report_sums_up_runs_per_fault_kind(tmp_path: Path) -> None:
    def fault(kind: str, gap: float, back: float | None) -> dict[str, object]:
        return {"kind": kind, "gap_without_202_s": gap, "first_202_after_heal_s": back}

    runs = {
        "seed-1": {
            "seed": 1,
            "duration": 180,
            "violations": [],
            "faults": [fault("latency", 3.0, 0.5)],
        },
        "seed-2": {
            "seed": 2,
            "duration": 180,
            "violations": [{"check": "settles"}],
            "faults": [fault("latency", 9.0, 2.5), fault("quorum_loss", 30.0, None)],
        },
        "broken": {
            "seed": 7,
            "duration": 30,
            "worker": "tests.nemesis.broken dedup",
            "violations": [{}],
            "faults": [],
        },
    }
    for name, outcome in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "outcome.json").write_text(json.dumps(outcome))
    again = {"seed": 2, "duration": 180, "violations": [], "faults": [fault("latency", 1, 1)]}
    (tmp_path / "seed-2-later").mkdir()
    (tmp_path / "seed-2-later" / "outcome.json").write_text(json.dumps(again))
    rerun = render(load(sorted(tmp_path.iterdir())))
    assert rerun.startswith("2 runs (seeds 1, 2) of 180 s of load each: **0 violations**.")
    assert "Earlier runs of seeds [2] found violations" in rerun
    (tmp_path / "seed-2-later" / "outcome.json").unlink()
    text = render(load(sorted(tmp_path.iterdir())))
    assert text.startswith("2 runs (seeds 1, 2) of 180 s of load each: violations in seeds [2].")
    assert "| latency | 2 | 9.0 | 1.5 / 2.5 |" in text
    assert "| quorum_loss | 1 | 30.0 | - (1 with no 202 after it) |" in text
    doc = tmp_path / "page.md"
    doc.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    write_doc(doc, text)
    assert doc.read_text() == f"before\n{BEGIN}\n{text}\n{END}\nafter\n"


def test_runs_kept_in_the_repository_count_with_local_ones_latest_last(tmp_path: Path) -> None:
    local, kept = tmp_path / "local", tmp_path / "kept"

    def run(name: str, seed: int, violations: list[dict[str, str]]) -> Path:
        folder = local / name
        folder.mkdir(parents=True)
        outcome = {"seed": seed, "duration": 180, "violations": violations, "faults": []}
        (folder / "outcome.json").write_text(json.dumps(outcome))
        return folder

    keep([run("seed-9-20261207-080000", 9, [{"check": "settles"}])], kept)
    assert [p.name for p in kept.iterdir()] == ["seed-9-20261207-080000.json"]
    (local / "seed-9-20261207-080000").rename(tmp_path / "gone")  # a new checkout's .local
    run("seed-10-20261207-070000", 10, [])
    run("seed-9-20261207-090000", 9, [])  # the rerun, after a fix
    outcomes = load_all(local, kept)
    assert [(o["seed"], bool(o["violations"])) for o in outcomes] == [
        (9, True),
        (9, False),
        (10, False),
    ]
    text = render(outcomes)
    assert text.startswith("2 runs (seeds 9, 10) of 180 s of load each: **0 violations**.")
    assert "Earlier runs of seeds [9] found violations" in text


def test_a_port_is_handed_out_once_per_process() -> None:
    from tests.services import free_block, free_port

    ports = {free_port() for _ in range(200)}
    assert len(ports) == 200
    block = free_block(3, spread=(0, 10))
    assert not {block, block + 1, block + 2, block + 10, block + 12} & ports
