"""The nemesis's checker: what a run's history must satisfy, over plain data (no Kafka here).

It takes what the client was answered and what every topic holds (read_committed, to the end
offsets), and returns the violations, each with its first offending records. `cfn.raw` is the
truth for everything downstream: a 503 or an unanswered request may still have been written,
and what was written must be processed exactly once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cfn.schemas.payload import Notification, parse
from tests.records_check import raw_check

EXAMPLES = 5  # offending records printed per violation
READY_GRACE_S = 4.0  # /readyz may still say 200 this long after Kafka became unreachable


@dataclass(frozen=True)
class RawRecord:
    """One record of cfn.raw: its ingest request id, tenant and exact bytes."""

    request_id: str
    tenant: str
    value: bytes


@dataclass
class History:
    """Everything a run observed, for `check`.

    Attributes:
        answers: every HTTP attempt of the load (tests/nemesis/load.py's Answer as a dict).
        raw, events, incidents, rates: the topics, decoded (raw as RawRecord).
        incident_state: (key, value or None for a tombstone) of cfn.incident-state, in order.
        exits: processes that exited without the nemesis killing them (one line each).
        ready: (process name, wall time, /readyz status, 0 for no answer) samples.
        outages: (start, end) wall times when every client link to Kafka was cut.
        final_ready: each process's /readyz status once healed and settled.
        unsettled: why the workers did not commit every input topic to its end once healed.
    """

    answers: list[dict[str, Any]]
    raw: list[RawRecord]
    events: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    incident_state: list[tuple[str, dict[str, Any] | None]]
    rates: list[dict[str, Any]]
    exits: list[str] = field(default_factory=list)
    ready: list[tuple[str, float, int]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    final_ready: dict[str, int] = field(default_factory=dict)
    unsettled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Violation:
    check: str
    detail: str
    examples: list[str]

    def render(self) -> str:
        lines = [f"VIOLATION {self.check}: {self.detail}"]
        lines += [f"  {example[:400]}" for example in self.examples[:EXAMPLES]]
        return "\n".join(lines)


def _notifications(raw: Iterable[RawRecord]) -> dict[str, Notification]:
    """event id -> the notification, for every record of cfn.raw that parses."""
    out: dict[str, Notification] = {}
    for record in raw:
        parsed = parse(record.value, record.tenant, 0)
        if isinstance(parsed, Notification):
            out.setdefault(parsed.event_id, parsed)
    return out


def check_ingest(history: History) -> list[Violation]:
    """Every 202 is in cfn.raw with its bytes and tenant; no other 2xx; no 500 or odd status."""
    out: list[Violation] = []
    accepted = [a for a in history.answers if a["status"] == 202]
    found = raw_check(
        [(a["request_id"] or "", a["body"].encode()) for a in accepted],
        [(r.request_id, r.value) for r in history.raw],
    )
    if found.missing:
        examples = [repr(accepted[i]) for i in found.missing]
        out.append(
            Violation("accepted_in_raw", f"{len(found.missing)} 202s not in cfn.raw", examples)
        )
    if found.altered:
        examples = [repr(accepted[i]) for i in found.altered]
        out.append(Violation("accepted_in_raw", f"{len(found.altered)} 202s altered", examples))
    tenant_of = {r.request_id: r.tenant for r in history.raw}
    wrong = [
        a for a in accepted if tenant_of.get(a["request_id"] or "", a["tenant"]) != a["tenant"]
    ]
    if wrong:
        out.append(
            Violation(
                "accepted_in_raw", f"{len(wrong)} under another tenant", list(map(repr, wrong))
            )
        )
    other = [a for a in history.answers if 200 <= a["status"] < 300 and a["status"] != 202]
    if other:
        out.append(
            Violation("no_other_2xx", f"{len(other)} 2xx other than 202", list(map(repr, other)))
        )
    # 503 (+ Retry-After) and 429 are the retriable answers; 0 is no answer (a killed ingest).
    odd = [
        a
        for a in history.answers
        if a["status"] not in (0, 202, 429, 503) or (a["status"] == 503 and not a["retry_after"])
    ]
    if odd:
        out.append(Violation("retriable_answers", f"{len(odd)} odd answers", list(map(repr, odd))))
    return out


def check_events(history: History) -> list[Violation]:
    """Every notification in cfn.raw is in cfn.events exactly once, and nothing else is."""
    expected = _notifications(history.raw)
    counts = Counter(str(e["event_id"]) for e in history.events)
    out: list[Violation] = []
    missing = sorted(set(expected) - set(counts))
    if missing:
        examples = [f"{i} {expected[i]}" for i in missing]
        out.append(Violation("events_exactly_once", f"{len(missing)} notifications lost", examples))
    twice = sorted(i for i, c in counts.items() if c > 1)
    if twice:
        examples = [repr(e) for e in history.events if e["event_id"] in set(twice[:EXAMPLES])]
        out.append(Violation("events_exactly_once", f"{len(twice)} event ids repeated", examples))
    phantom = sorted(set(counts) - set(expected))
    if phantom:
        examples = [repr(e) for e in history.events if e["event_id"] in set(phantom[:EXAMPLES])]
        out.append(
            Violation("events_exactly_once", f"{len(phantom)} events not from cfn.raw", examples)
        )
    return out


def _latest(incidents: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for incident in incidents:
        known = latest.get(incident["incident_id"])
        if known is None or incident["version"] > known["version"]:
            latest[incident["incident_id"]] = incident
    return latest


def check_incidents(history: History) -> list[Violation]:
    """Versions per incident are 1..n exactly once each, and the latest agrees with cfn.raw:
    START and END there -> resolved; START only -> open; END only -> none yet (held as an
    orphan for CFN_ORPHAN_END_HOLD, 10 minutes, longer than a run)."""
    out: list[Violation] = []
    versions: dict[str, list[int]] = defaultdict(list)
    for incident in history.incidents:
        versions[incident["incident_id"]].append(incident["version"])
    gaps = {i: sorted(v) for i, v in versions.items() if sorted(v) != list(range(1, len(v) + 1))}
    if gaps:
        examples = [f"{i} versions {v}" for i, v in list(gaps.items())[:EXAMPLES]]
        out.append(
            Violation("incident_versions", f"{len(gaps)} incidents with gaps or repeats", examples)
        )
    seen: dict[tuple[str, str | None, str], set[str]] = defaultdict(set)
    for n in _notifications(history.raw).values():
        if n.correlation_id and n.event in ("start", "end"):
            seen[(n.tenant, n.account_id, n.correlation_id)].add(n.event)
    latest_by_key: dict[tuple[str, str | None, str], list[dict[str, Any]]] = defaultdict(list)
    for incident in _latest(history.incidents).values():
        key = (incident["tenant"], incident["account_id"], incident["correlation_id"])
        latest_by_key[key].append(incident)
    wrong = []
    for key in sorted(set(seen) | set(latest_by_key), key=repr):
        events, found = seen.get(key, set()), latest_by_key.get(key, [])
        want = "resolved" if events == {"start", "end"} else "open" if events == {"start"} else None
        states = sorted(i["state"] for i in found)
        if states != ([want] if want else []):
            wrong.append(f"{key}: cfn.raw has {sorted(events)}, latest incidents {found}")
    if wrong:
        out.append(Violation("incident_state_agrees", f"{len(wrong)} incidents disagree", wrong))
    return out


def check_incident_table(history: History) -> list[Violation]:
    """cfn.incident-state folds to the latest version of every incident."""
    table: dict[str, dict[str, Any]] = {}
    for key, value in history.incident_state:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    latest = _latest(history.incidents)
    wrong = [
        f"{i}: table {table.get(i)} latest {latest.get(i)}"
        for i in sorted(set(table) | set(latest))
        if table.get(i) != latest.get(i)
    ]
    if wrong:
        return [Violation("incident_state_table", f"{len(wrong)} entries differ", wrong)]
    return []


def check_rates(history: History) -> list[Violation]:
    """The latest revision of every emitted window counts the alert events of cfn.events in it
    (per type, and per account and type)."""
    latest: dict[str, dict[str, Any]] = {}
    for rate in history.rates:
        known = latest.get(rate["rate_id"])
        if known is None or rate["revision"] > known["revision"]:
            latest[rate["rate_id"]] = rate
    alerts = [e for e in history.events if e["kind"] == "alert"]
    by_type: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for event in alerts:
        by_type[event["alert_type"]].append(event)
    wrong = []
    for rate in latest.values():
        recount = sum(
            1
            for e in by_type.get(rate["alert_type"], [])
            if rate["window_start"] <= e["ts"] < rate["window_end"]
            and (rate["scope"] == "type" or e["account_id"] == rate["account_id"])
        )
        if recount != rate["count"]:
            wrong.append(f"recount {recount}: {rate}")
    if wrong:
        return [Violation("rates_recount", f"{len(wrong)} windows miscounted", wrong)]
    return []


def check_processes(history: History) -> list[Violation]:
    """No exit the nemesis did not cause; every /readyz truthful; caught up once healed."""
    out: list[Violation] = []
    if history.unsettled:
        out.append(Violation("settles", "inputs not processed once healed", history.unsettled))
    if history.exits:
        out.append(
            Violation("no_manual_restart", f"{len(history.exits)} unplanned exits", history.exits)
        )
    lies = [
        f"{name} said {status} at {t:.1f}, in a total outage {a:.1f}-{b:.1f}"
        for name, t, status in history.ready
        for a, b in history.outages
        if status == 200 and a + READY_GRACE_S <= t <= b
    ]
    if lies:
        out.append(
            Violation("readyz_truthful", f"{len(lies)} 200s while Kafka was unreachable", lies)
        )
    unready = [
        f"{name}: {status}" for name, status in sorted(history.final_ready.items()) if status != 200
    ]
    if unready:
        out.append(Violation("readyz_truthful", "not ready once healed and settled", unready))
    return out


def check(history: History) -> list[Violation]:
    """Every check, in order; an empty list is a clean run."""
    return [
        *check_ingest(history),
        *check_events(history),
        *check_incidents(history),
        *check_incident_table(history),
        *check_rates(history),
        *check_processes(history),
    ]
