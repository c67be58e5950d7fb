"""Dropping redeliveries: remember each event id for a window, then forget it."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field


@dataclass
class Deduplicator:
    """Answers "seen this notification within the window?" over a plain mapping.

    The mapping (a changelog-backed table in the worker, a dict in tests) maps
    event_id -> [first_seen_epoch_s, partition]. Time comes from the records
    themselves (ingest's received_at), so a replay of the same range decides as the live run
    did. An in-memory index orders keys by first sighting so expiry is O(expired), not a scan; it
    is derived data, rebuilt from the mapping after a restart or rebalance.

    It trades memory for certainty: one entry per unique event for the whole window.
    """

    store: MutableMapping[str, list[int]]
    window_s: float
    _order: dict[int, deque[tuple[int, str]]] = field(default_factory=dict)

    def rebuild(self, items: Iterable[tuple[str, list[int]]]) -> None:
        """Re-derive the expiry index from the store's contents."""
        per_partition: dict[int, list[tuple[int, str]]] = {}
        for key, (first_seen, partition) in items:
            per_partition.setdefault(partition, []).append((first_seen, key))
        self._order = {p: deque(sorted(entries)) for p, entries in per_partition.items()}

    def is_duplicate(self, event_id: str, now: int, partition: int) -> bool:
        """True for a redelivery within the window; otherwise records the sighting."""
        seen = self.store.get(event_id)
        if seen is not None and now - seen[0] < self.window_s:
            return True
        self.store[event_id] = [now, partition]
        self._order.setdefault(partition, deque()).append((now, event_id))
        return False

    def due(self, now: float, partition: int) -> bool:
        """Whether `expire` has anything to forget on this partition at `now`."""
        order = self._order.get(partition)
        return order is not None and len(order) > 0 and now - order[0][0] >= self.window_s

    def expire(self, now: float, partition: int) -> int:
        """Forget this partition's ids first seen a full window ago; returns how many."""
        order = self._order.get(partition)
        removed = 0
        while order and now - order[0][0] >= self.window_s:
            first_seen, key = order.popleft()
            current = self.store.get(key)
            # Skip index entries made stale by a later re-sighting of the same id.
            if current is not None and current[0] == first_seen:
                del self.store[key]
                removed += 1
        return removed

    def __len__(self) -> int:
        return sum(len(order) for order in self._order.values())
