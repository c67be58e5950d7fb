"""Pairing START with END into incidents, with explicit timers for expiry and held ENDs."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cfn.schemas.keys import correlation_key
from cfn.schemas.payload import Notification
from cfn.schemas.records import IncidentRecord, short_hash

State = dict[str, Any]
Describe = Callable[[str | None], dict[str, str | None] | None]

OPEN, RESOLVED, EXPIRED, ORPHAN, HELD = "open", "resolved", "expired", "orphan_end", "held"


def _no_catalog(_alert_type: str | None) -> dict[str, str | None] | None:
    return None


@dataclass
class Correlator:
    """The incident state machine over a plain mapping of correlation key -> state dict.

    States: held (an END waiting for its START), open, resolved, expired, orphan_end. Every
    change returns a new `IncidentRecord` version. Deadlines are epoch seconds in processing
    time: event-driven ones come from ingest's received_at, timer firings from `tick(now)`.
    A per-partition heap of deadlines is derived state, rebuilt from the mapping on recovery;
    the mapping alone is the truth.

    Emits an `open` record again (same incident_id, next version) on each re-notification, so
    subscribers see `renotify_count` move; it never creates a second incident for one key
    while the first is open.
    """

    store: MutableMapping[str, State]
    stale_after: Callable[[str | None], float]
    orphan_hold_s: float
    closed_retention_s: float
    describe: Describe = _no_catalog
    _timers: dict[int, list[tuple[float, str]]] = field(default_factory=dict)
    open_by_type: Counter[str | None] = field(default_factory=Counter)

    # ---- recovery ---------------------------------------------------------------------------

    def rebuild(self, items: Iterable[tuple[str, State]]) -> None:
        """Re-derive timers and the open-incident counts from the mapping's contents."""
        self._timers = {}
        self.open_by_type = Counter()
        for key, state in items:
            self._schedule(key, state)
            if state["st"] == OPEN:
                self.open_by_type[state["type"]] += 1

    def _schedule(self, key: str, state: State) -> None:
        heapq.heappush(self._timers.setdefault(state["p"], []), (state["deadline"], key))

    # ---- events -----------------------------------------------------------------------------

    def on_event(self, n: Notification, partition: int) -> list[IncidentRecord]:
        """Apply one unique notification; returns the incident versions it produced."""
        if n.kind != "alert" or not n.correlation_id or n.event not in ("start", "end"):
            return []
        key = correlation_key(n.tenant, n.account_id, n.correlation_id)
        now = n.received_at // 1000
        state = self.store.get(key)
        if n.event == "start":
            return self._start(key, state, n, now, partition)
        return self._end(key, state, n, now, partition)

    def _start(
        self, key: str, state: State | None, n: Notification, now: int, partition: int
    ) -> list[IncidentRecord]:
        if state is None or state["st"] in (RESOLVED, EXPIRED, ORPHAN):
            fresh = self._new(key, n, partition, first_event_id=n.event_id)
            fresh.update(st=OPEN, opened=n.ts, deadline=now + self.stale_after(n.alert_type))
            return [self._commit(key, fresh, was=None)]
        if state["st"] == HELD:
            held = state["held"]
            opened = self._new(key, n, partition, first_event_id=n.event_id)
            opened.update(st=OPEN, opened=n.ts, ordering="end_before_start")
            first = self._record(opened)
            opened["v"] += 1
            opened.update(
                st=RESOLVED,
                closed=held["ts"],
                dur=held["ts"] - n.ts,
                reason="end",
                last=held["event_id"],
                deadline=now + self.closed_retention_s,
            )
            return [first, self._commit(key, opened, was=None)]
        # Already open: a re-notification (policy alert_interval) of the same incident.
        state = dict(state)
        state["v"] += 1
        state["renotify"] += 1
        state["last"] = n.event_id
        state["deadline"] = now + self.stale_after(state["type"])
        return [self._commit(key, state, was=OPEN)]

    def _end(
        self, key: str, state: State | None, n: Notification, now: int, partition: int
    ) -> list[IncidentRecord]:
        if state is None:
            held = self._new(key, n, partition, first_event_id=n.event_id)
            held.update(
                st=HELD,
                v=0,
                held={"event_id": n.event_id, "ts": n.ts},
                deadline=now + self.orphan_hold_s,
            )
            self.store[key] = held
            self._schedule(key, held)
            return []
        st = state["st"]
        if st == OPEN:
            state = dict(state)
            state["v"] += 1
            state.update(
                st=RESOLVED,
                closed=n.ts,
                dur=n.ts - state["opened"],
                reason="end",
                last=n.event_id,
                deadline=now + self.closed_retention_s,
            )
            return [self._commit(key, state, was=OPEN)]
        if st == EXPIRED and not state["late_end"]:
            state = dict(state)
            state["v"] += 1
            state.update(late_end=True, last=n.event_id, dur=n.ts - state["opened"])
            return [self._commit(key, state, was=EXPIRED)]
        # A second END for a held, resolved or orphaned incident adds nothing.
        return []

    def mark_flap(self, key: str, incident_id: str, flap_id: str) -> IncidentRecord | None:
        """Incident `incident_id` (table key `key`) is a cycle of flap episode `flap_id`: its
        next version says so, and so do all after. None if it is gone or already marked."""
        state = self.store.get(key)
        if state is None or state["id"] != incident_id or state.get("flap") == flap_id:
            return None
        state = {**state, "v": state["v"] + 1, "flap": flap_id}
        return self._commit(key, state, was=state["st"])

    # ---- timers -----------------------------------------------------------------------------

    def tick(self, now: float, partition: int) -> list[IncidentRecord]:
        """Fire this partition's due deadlines: expire stale incidents, release orphan ENDs,
        and forget closed incidents after their retention."""
        return [record for _deadline, record in self.fire(now, partition)]

    def fire(self, now: float, partition: int) -> list[tuple[float, IncidentRecord]]:
        """`tick`, with the deadline that produced each record: the time of the change, the
        same whenever the tick comes (a replay's single late tick included)."""
        timers = self._timers.get(partition)
        out: list[tuple[float, IncidentRecord]] = []
        while timers and timers[0][0] <= now:
            deadline, key = heapq.heappop(timers)
            state = self.store.get(key)
            if state is None or state["deadline"] != deadline:
                continue  # superseded by a later change; its own entry is in the heap
            st = state["st"]
            if st == OPEN:
                state = dict(state)
                state["v"] += 1
                state.update(
                    st=EXPIRED,
                    closed=int(deadline),  # when it went stale, not when a tick noticed
                    reason="stale_timeout",
                    deadline=deadline + self.closed_retention_s,
                )
                out.append((deadline, self._commit(key, state, was=OPEN)))
            elif st == HELD:
                state = dict(state)
                held = state.pop("held")
                state.update(
                    st=ORPHAN,
                    v=1,
                    id=self._incident_id(key, held["event_id"]),
                    closed=held["ts"],
                    reason="orphan_end",
                    deadline=deadline + self.closed_retention_s,
                )
                out.append((deadline, self._commit(key, state, was=None)))
            else:
                del self.store[key]
        return out

    # ---- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _incident_id(key: str, first_event_id: str) -> str:
        return "in_" + short_hash(key, first_event_id)

    def _new(self, key: str, n: Notification, partition: int, first_event_id: str) -> State:
        return {
            "st": OPEN,
            "id": self._incident_id(key, first_event_id),
            "v": 1,
            "p": partition,
            "tenant": n.tenant,
            "acc": n.account_id,
            "type": n.alert_type,
            "corr": n.correlation_id,
            "opened": None,
            "closed": None,
            "dur": None,
            "reason": None,
            "renotify": 0,
            "ordering": "in_order",
            "late_end": False,
            "first": first_event_id,
            "last": n.event_id,
            "deadline": 0.0,
        }

    def _commit(self, key: str, state: State, was: str | None) -> IncidentRecord:
        self.store[key] = state
        self._schedule(key, state)
        if was == OPEN and state["st"] != OPEN:
            self.open_by_type[state["type"]] -= 1
        elif was != OPEN and state["st"] == OPEN:
            self.open_by_type[state["type"]] += 1
        return self._record(state)

    def _record(self, state: State) -> IncidentRecord:
        return IncidentRecord(
            incident_id=state["id"],
            version=state["v"],
            state=state["st"],
            tenant=state["tenant"],
            account_id=state["acc"],
            alert_type=state["type"],
            correlation_id=state["corr"],
            opened_at=state["opened"],
            closed_at=state["closed"],
            duration_s=state["dur"],
            close_reason=state["reason"],
            renotify_count=state["renotify"],
            ordering=state["ordering"],
            late_end=state["late_end"],
            first_event_id=state["first"],
            last_event_id=state["last"],
            catalog=self.describe(state["type"]),
            flap_id=state.get("flap"),
        )
