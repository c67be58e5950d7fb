"""Pairing START with END into incidents, with explicit timers for expiry and held ENDs."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cfn.processors.incident import (
    CLOSED,
    DEADLINE,
    DUR,
    END_BEFORE_START,
    FIRST,
    FLAGS,
    FLAP,
    KEY,
    LAST,
    LATE_END,
    NO_ACCOUNT,
    OPENED,
    RENOTIFY,
    ST,
    TYPE,
    Incident,
    V,
    compact_id,
    full_id,
    intern_type,
)
from cfn.schemas import jsonio
from cfn.schemas.keys import correlation_key
from cfn.schemas.payload import Notification
from cfn.schemas.records import IncidentRecord, short_hash

Describe = Callable[[str | None], dict[str, str | None] | None]

OPEN, RESOLVED, EXPIRED, ORPHAN, HELD = "open", "resolved", "expired", "orphan_end", "held"
REASONS = {OPEN: None, RESOLVED: "end", EXPIRED: "stale_timeout", ORPHAN: "orphan_end"}
SHARED_TIMES = 4096  # recent times kept as one object each; the cache restarts when full
COMPACT_AFTER = 64  # superseded heap entries of a partition before its heap may be compacted


def _no_catalog(_alert_type: str | None) -> dict[str, str | None] | None:
    return None


@dataclass
class Correlator:
    """The incident state machine over a plain mapping of correlation key -> `Incident`.

    States: held (an END waiting for its START), open, resolved, expired, orphan_end. Every
    change returns a new `IncidentRecord` version. Deadlines are epoch seconds in processing
    time: event-driven ones come from ingest's received_at, timer firings from `tick(now)`.
    A per-partition heap of the incidents themselves, by deadline, is derived state, rebuilt
    from the mapping on recovery; the mapping alone is the truth. A change stores a new
    `Incident` and pushes it; the one it replaced stays in the heap until it is popped and
    skipped (it is no longer the stored one), or until enough such entries make the heap
    compact itself.

    Emits an `open` record again (same incident_id, next version) on each re-notification, so
    subscribers see `renotify_count` move; it never creates a second incident for one key
    while the first is open.
    """

    store: MutableMapping[str, Incident]
    stale_after: Callable[[str | None], float]
    orphan_hold_s: float
    closed_retention_s: float
    describe: Describe = _no_catalog
    _timers: dict[int, list[Incident]] = field(default_factory=dict)
    _superseded: dict[int, int] = field(default_factory=dict)  # per partition's heap
    # Deadlines and START times by value: incidents of one second share one object (32 bytes
    # each otherwise). An int and a float of equal value are kept apart.
    _times: dict[float, float] = field(default_factory=dict)
    open_by_type: Counter[str | None] = field(default_factory=Counter)

    # ---- recovery ---------------------------------------------------------------------------

    def rebuild(self, items: Iterable[tuple[str, Incident]]) -> None:
        """Re-derive timers and the open-incident counts from the mapping's contents.

        A restored value comes without its key (`incident.decode`) and with times of its own:
        it takes the table's key and the shared times, which changes no field's value."""
        self._timers, self._superseded = {}, {}
        self.open_by_type = Counter()
        for key, state in items:
            state[KEY] = key
            state[DEADLINE] = self._shared(state[DEADLINE])
            state[OPENED] = self._shared(state[OPENED])
            heap = self._timers.get(state.p)
            if heap is None:
                heap = self._timers[state.p] = []
            heap.append(state)
            if state[ST] == OPEN:
                self.open_by_type[state[TYPE]] += 1
        for heap in self._timers.values():
            heapq.heapify(heap)

    def _schedule(self, state: Incident, replaced: bool) -> None:
        """Push `state` on its partition's heap; `replaced`: it supersedes a stored incident
        whose entry is still there. A heap whose superseded entries outnumber its live ones
        is rebuilt from the live ones: re-notifications would otherwise grow it without end."""
        partition = state.p
        heap = self._timers.get(partition)
        if heap is None:
            heap = self._timers[partition] = []
        heapq.heappush(heap, state)
        if not replaced:
            return
        superseded = self._superseded.get(partition, 0) + 1
        if superseded > COMPACT_AFTER and 2 * superseded > len(heap):
            store = self.store
            heap = self._timers[partition] = [s for s in heap if store.get(s[KEY]) is s]
            heapq.heapify(heap)
            superseded = 0
        self._superseded[partition] = superseded

    def _shared(self, value: Any) -> Any:
        if value is None:
            return None
        times = self._times
        kept = times.get(value)
        if kept is not None and type(kept) is type(value):
            return kept
        if len(times) >= SHARED_TIMES:
            times.clear()
        times[value] = value
        return value

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
        self, key: str, state: Incident | None, n: Notification, now: int, partition: int
    ) -> list[IncidentRecord]:
        if state is None or state[ST] in (RESOLVED, EXPIRED, ORPHAN):
            fresh = self._new(key, n, partition)
            fresh[OPENED] = self._shared(n.ts)
            fresh[DEADLINE] = self._shared(now + self.stale_after(n.alert_type))
            return [self._commit(key, fresh, was=None, replaced=state is not None)]
        if state[ST] == HELD:
            held_ts, held_event = state[CLOSED], state[FIRST]
            opened = self._new(key, n, partition)
            opened[OPENED] = self._shared(n.ts)
            opened[FLAGS] |= END_BEFORE_START
            first = self._record(key, opened)
            opened[V] += 1
            opened[ST] = RESOLVED
            opened[CLOSED] = held_ts
            opened[DUR] = held_ts - n.ts
            opened[LAST] = held_event
            opened[DEADLINE] = self._shared(now + self.closed_retention_s)
            return [first, self._commit(key, opened, was=None, replaced=True)]
        # Already open: a re-notification (policy alert_interval) of the same incident.
        state = Incident(state)
        state[V] += 1
        state[RENOTIFY] += 1
        state[LAST] = compact_id(n.event_id)
        state[DEADLINE] = self._shared(now + self.stale_after(state[TYPE]))
        return [self._commit(key, state, was=OPEN, replaced=True)]

    def _end(
        self, key: str, state: Incident | None, n: Notification, now: int, partition: int
    ) -> list[IncidentRecord]:
        if state is None:
            # Held: FIRST and LAST say the END's event id, CLOSED its ts, until the START.
            held = self._new(key, n, partition)
            held[ST] = HELD
            held[V] = 0
            held[CLOSED] = self._shared(n.ts)
            held[DEADLINE] = self._shared(now + self.orphan_hold_s)
            self.store[key] = held
            self._schedule(held, replaced=False)
            return []
        st = state[ST]
        if st == OPEN:
            state = Incident(state)
            state[V] += 1
            state[ST] = RESOLVED
            state[CLOSED] = self._shared(n.ts)
            state[DUR] = n.ts - state[OPENED]
            state[LAST] = compact_id(n.event_id)
            state[DEADLINE] = self._shared(now + self.closed_retention_s)
            return [self._commit(key, state, was=OPEN, replaced=True)]
        if st == EXPIRED and not state[FLAGS] & LATE_END:
            state = Incident(state)
            state[V] += 1
            state[FLAGS] |= LATE_END
            state[LAST] = compact_id(n.event_id)
            state[DUR] = n.ts - state[OPENED]
            return [self._commit(key, state, was=EXPIRED, replaced=True)]
        # A second END for a held, resolved or orphaned incident adds nothing.
        return []

    def mark_flap(self, key: str, incident_id: str, flap_id: str) -> IncidentRecord | None:
        """Incident `incident_id` (table key `key`) is a cycle of flap episode `flap_id`: its
        next version says so, and so do all after. None if it is gone or already marked."""
        state = self.store.get(key)
        if state is None or state[FLAP] == flap_id or self._incident_id(key, state) != incident_id:
            return None
        state = Incident(state)
        state[V] += 1
        state[FLAP] = flap_id
        return self._commit(key, state, was=state[ST], replaced=True)

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
        while timers and timers[0][DEADLINE] <= now:
            due = heapq.heappop(timers)
            key = due[KEY]
            if self.store.get(key) is not due:
                # Superseded by a later change; its own entry is in the heap.
                self._superseded[partition] = max(0, self._superseded.get(partition, 0) - 1)
                continue
            deadline = due[DEADLINE]
            st = due[ST]
            if st == OPEN:
                state = Incident(due)
                state[V] += 1
                state[ST] = EXPIRED
                state[CLOSED] = int(deadline)  # when it went stale, not when a tick noticed
                state[DEADLINE] = self._shared(deadline + self.closed_retention_s)
                out.append((deadline, self._commit(key, state, was=OPEN, replaced=False)))
            elif st == HELD:
                state = Incident(due)  # CLOSED is the held END's ts already
                state[ST] = ORPHAN
                state[V] = 1
                state[DEADLINE] = self._shared(deadline + self.closed_retention_s)
                out.append((deadline, self._commit(key, state, was=None, replaced=False)))
            else:
                del self.store[key]
        return out

    # ---- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _incident_id(key: str, state: Incident) -> str:
        return "in_" + short_hash(key, full_id(state[FIRST]))

    def _new(self, key: str, n: Notification, partition: int) -> Incident:
        """An open incident of `n`'s type whose first event is `n`; no times yet."""
        first = compact_id(n.event_id)
        no_account = NO_ACCOUNT if n.account_id is None else 0
        # DEADLINE, KEY, V, P, ST, TYPE, OPENED, CLOSED, DUR, RENOTIFY, FLAGS, FIRST, LAST, FLAP
        fields = [0.0, key, 1, partition, OPEN, intern_type(n.alert_type), None, None, None, 0]
        return Incident([*fields, no_account, first, first, None])

    def _commit(self, key: str, state: Incident, was: str | None, replaced: bool) -> IncidentRecord:
        self.store[key] = state
        self._schedule(state, replaced)
        if was == OPEN and state[ST] != OPEN:
            self.open_by_type[state[TYPE]] -= 1
        elif was != OPEN and state[ST] == OPEN:
            self.open_by_type[state[TYPE]] += 1
        return self._record(key, state)

    def _record(self, key: str, state: Incident) -> IncidentRecord:
        tenant, account_id, correlation_id = jsonio.loads(key)
        flags = state[FLAGS]
        first = full_id(state[FIRST])
        return IncidentRecord(
            incident_id="in_" + short_hash(key, first),
            version=state[V],
            state=state[ST],
            tenant=tenant,
            account_id=None if flags & NO_ACCOUNT else account_id,
            alert_type=state[TYPE],
            correlation_id=correlation_id,
            opened_at=state[OPENED],
            closed_at=state[CLOSED],
            duration_s=state[DUR],
            close_reason=REASONS.get(state[ST]),
            renotify_count=state[RENOTIFY],
            ordering="end_before_start" if flags & END_BEFORE_START else "in_order",
            late_end=bool(flags & LATE_END),
            first_event_id=first,
            last_event_id=first if state[LAST] is state[FIRST] else full_id(state[LAST]),
            catalog=self.describe(state[TYPE]),
            flap_id=state[FLAP],
        )
