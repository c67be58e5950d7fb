"""Dropping redeliveries: remember each event id for a window, then forget it."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cfn.schemas.history import KEY_PREFIX

PARTITION_BITS = 16  # a seen-value is first_seen << 16 | partition


def seen_value(first_seen: int, partition: int) -> int:
    """The table value of one event id: one int (first sighting, epoch s; and its partition).

    Format 2. Format 1 was the list [first_seen, partition]: 72 bytes more per id for the list
    object. A worker reads both (`first_seen_of`, `partition_of_seen`), so changelogs written
    before keep working; every id written again is written in format 2.
    """
    return first_seen << PARTITION_BITS | partition


def first_seen_of(value: Any) -> int:
    return int(value >> PARTITION_BITS) if type(value) is int else int(value[0])


def partition_of_seen(value: Any) -> int:
    return int(value & 0xFFFF) if type(value) is int else int(value[1])


@dataclass
class Deduplicator:
    """Answers "seen this notification within the window?" over a plain mapping.

    The mapping (a changelog-backed table in the worker, a dict in tests) maps
    event_id -> `seen_value(first_seen_epoch_s, partition)`. Time comes from the records
    themselves (ingest's received_at), so a replay of the same range decides as the live run
    did. An in-memory index orders keys by first sighting so expiry is O(expired), not a scan; it
    is derived data, rebuilt from the mapping after a restart or rebalance. The index is two
    deques per partition (times, ids), not one of (time, id) tuples: 56 bytes less per id, and
    one int object per second of sightings, not one per id.

    It trades memory for certainty: one entry per unique event for the whole window.

    The same table keeps the notification keys of backfills from Cloudflare's history
    (`cfn.schemas.history`, prefix "nk_"), which `take` consumes: one original per backfill.
    `marked` names the partitions holding any, so others skip the lookup.
    """

    store: MutableMapping[str, Any]
    window_s: float
    _times: dict[int, deque[int]] = field(default_factory=dict)
    _ids: dict[int, deque[str]] = field(default_factory=dict)
    _last_now: int = -1  # the last `now` seen, shared by the index entries of that second
    marked: set[int] = field(default_factory=set)  # partitions that hold notification keys

    def rebuild(self, items: Iterable[tuple[str, Any]]) -> None:
        """Re-derive the expiry index from the store's contents (either value format)."""
        per_partition: dict[int, list[tuple[int, str]]] = {}
        marked: set[int] = set()
        for key, value in items:
            partition = partition_of_seen(value)
            per_partition.setdefault(partition, []).append((first_seen_of(value), key))
            if key.startswith(KEY_PREFIX):
                marked.add(partition)
        self.marked = marked
        self._times, self._ids = {}, {}
        for partition, entries in per_partition.items():
            entries.sort()
            self._times[partition] = deque(t for t, _ in entries)
            self._ids[partition] = deque(k for _, k in entries)

    def is_duplicate(self, event_id: str, now: int, partition: int) -> bool:
        """True for a redelivery within the window; otherwise records the sighting."""
        seen = self.store.get(event_id)
        if seen is not None and now - first_seen_of(seen) < self.window_s:
            return True
        if now == self._last_now:
            now = self._last_now  # the same int object: one per second, not one per id
        else:
            self._last_now = now
        self.store[event_id] = seen_value(now, partition)
        times = self._times.get(partition)
        if times is None:
            times = self._times[partition] = deque()
            self._ids[partition] = deque()
        times.append(now)
        self._ids[partition].append(event_id)
        return False

    def remember(self, key: str, now: int, partition: int) -> None:
        """Keep a notification key for the window (again: the first sighting stays)."""
        self.marked.add(partition)
        self.is_duplicate(key, now, partition)

    def take(self, key: str, now: int) -> bool:
        """Whether a notification key is kept and within the window; if so, forget it (one
        original per backfill). The index entry stays until `expire` skips it."""
        seen = self.store.get(key)
        if seen is None or now - first_seen_of(seen) >= self.window_s:
            return False
        del self.store[key]
        return True

    def due(self, now: float, partition: int) -> bool:
        """Whether `expire` has anything to forget on this partition at `now`."""
        times = self._times.get(partition)
        return times is not None and len(times) > 0 and now - times[0] >= self.window_s

    def expire(self, now: float, partition: int) -> int:
        """Forget this partition's ids first seen a full window ago; returns how many."""
        times = self._times.get(partition)
        if not times:
            return 0
        ids = self._ids[partition]
        removed = 0
        while times and now - times[0] >= self.window_s:
            first_seen = times.popleft()
            key = ids.popleft()
            current = self.store.get(key)
            # Skip index entries made stale by a later re-sighting of the same id.
            if current is not None and first_seen_of(current) == first_seen:
                del self.store[key]
                removed += 1
        return removed

    def __len__(self) -> int:
        return sum(len(times) for times in self._times.values())
