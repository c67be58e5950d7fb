"""When `cfn.incident-state` forgets a closed incident: a tombstone timer per incident_id.

`cfn.incident-state` is a compacted table topic, keyed by incident_id, that holds the latest
version of every open and recently closed incident. Every incident version goes to it as well as
to `cfn.incidents`; this module decides only when a closed incident is removed from it with a
tombstone: `retention_s` after its last closing version (resolved, expired, orphan_end, or a
late END on an expired one). The schedule is a plain mapping (a changelog table in the worker),
so it survives restarts and rebalances, and its times come from the same clock as the
incident's own (received_at for event-driven changes, the tick's time for timer firings), so a
replay decides the same tombstones as the live run.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cfn.schemas.records import IncidentRecord

CLOSED = frozenset({"resolved", "expired", "orphan_end"})

Due = dict[str, Any]  # {"p": partition, "due": epoch seconds}


@dataclass
class StateRetention:
    """Tombstone timers over a mapping of incident_id -> {"p": partition, "due": epoch s}.

    A per-partition heap of due times is derived state, rebuilt from the mapping on recovery;
    the mapping alone is the truth.
    """

    store: MutableMapping[str, Due]
    retention_s: float
    _timers: dict[int, list[tuple[float, str]]] = field(default_factory=dict)

    def rebuild(self, items: Iterable[tuple[str, Due]]) -> None:
        self._timers = {}
        for incident_id, due in items:
            heapq.heappush(self._timers.setdefault(due["p"], []), (due["due"], incident_id))

    def on_version(self, record: IncidentRecord, now: float, partition: int) -> None:
        """One incident version was written at `now`: a closing version (re)starts its
        incident's retention; an open one needs no timer (incident ids never reopen)."""
        if record.state not in CLOSED:
            return
        due = now + self.retention_s
        self.store[record.incident_id] = {"p": partition, "due": due}
        heapq.heappush(self._timers.setdefault(partition, []), (due, record.incident_id))

    def tick(self, now: float, partition: int) -> list[str]:
        """The incident ids of this partition whose retention has passed, each once."""
        timers = self._timers.get(partition)
        gone: list[str] = []
        while timers and timers[0][0] <= now:
            due, incident_id = heapq.heappop(timers)
            entry = self.store.get(incident_id)
            if entry is None or entry["due"] != due:
                continue  # superseded by a later closing version; its own entry is queued
            del self.store[incident_id]
            gone.append(incident_id)
        return gone
