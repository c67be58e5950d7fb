"""processors.dedup: redeliveries inside the window are dropped, expiry is cheap and rebuildable."""

from __future__ import annotations

import random
from collections.abc import Iterator, MutableMapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cfn.processors.dedup import Deduplicator, first_seen_of, partition_of_seen, seen_value

WINDOW = 600
T0 = 1_700_000_000


class CountingStore(MutableMapping[str, Any]):
    """A dict that counts how often it is read, written, deleted from and scanned."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.reads = self.writes = self.deletes = self.scans = 0

    def __getitem__(self, key: str) -> Any:
        self.reads += 1
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        self.deletes += 1
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        self.scans += 1
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def reset(self) -> None:
        self.reads = self.writes = self.deletes = self.scans = 0


def dedup(store: MutableMapping[str, Any] | None = None) -> Deduplicator:
    return Deduplicator(store={} if store is None else store, window_s=WINDOW)


def test_first_sighting_is_new_and_redelivery_within_window_is_duplicate() -> None:
    d = dedup()
    assert d.is_duplicate("ev_a", T0, 0) is False
    assert d.is_duplicate("ev_a", T0, 0) is True
    assert d.is_duplicate("ev_a", T0 + WINDOW - 1, 0) is True
    assert d.is_duplicate("ev_b", T0 + 1, 0) is False


def test_redelivery_a_full_window_later_is_new() -> None:
    d = dedup()
    assert d.is_duplicate("ev_a", T0, 0) is False
    assert d.is_duplicate("ev_a", T0 + WINDOW, 0) is False
    assert d.store["ev_a"] == seen_value(T0 + WINDOW, 0)  # the new sighting starts a new window
    assert d.is_duplicate("ev_a", T0 + WINDOW + 1, 0) is True


def test_duplicates_do_not_extend_the_window() -> None:
    d = dedup()
    d.is_duplicate("ev_a", T0, 3)
    for offset in (100, 300, WINDOW - 1):
        assert d.is_duplicate("ev_a", T0 + offset, 3) is True
    assert d.store["ev_a"] == seen_value(T0, 3)
    assert d.is_duplicate("ev_a", T0 + WINDOW, 3) is False


def test_expire_removes_only_old_ids_of_that_partition() -> None:
    d = dedup()
    d.is_duplicate("old-p0", T0, 0)
    d.is_duplicate("new-p0", T0 + 100, 0)
    d.is_duplicate("old-p1", T0, 1)
    assert d.expire(T0 + WINDOW - 1, 0) == 0
    assert d.expire(T0 + WINDOW, 0) == 1
    assert set(d.store) == {"new-p0", "old-p1"}
    assert d.expire(T0 + WINDOW, 2) == 0  # a partition with nothing in it
    assert d.expire(T0 + WINDOW + 100, 0) == 1
    assert set(d.store) == {"old-p1"}
    assert d.expire(T0 + WINDOW, 1) == 1
    assert d.store == {}
    assert len(d) == 0


def test_expire_touches_only_what_it_expires() -> None:
    store = CountingStore()
    d = dedup(store)
    expired = 3
    for i in range(expired):
        d.is_duplicate(f"old-{i}", T0 + i, 0)
    for i in range(2000):
        d.is_duplicate(f"fresh-{i}", T0 + 300, 0)
    store.reset()
    assert d.expire(T0 + WINDOW + expired, 0) == expired
    assert store.scans == 0
    assert store.reads == expired
    assert store.deletes == expired
    assert len(store) == 2000


def test_resighting_after_expiry_is_new() -> None:
    d = dedup()
    d.is_duplicate("ev_a", T0, 0)
    assert d.expire(T0 + WINDOW, 0) == 1
    assert "ev_a" not in d.store
    assert d.is_duplicate("ev_a", T0 + WINDOW + 5, 0) is False
    assert d.is_duplicate("ev_a", T0 + WINDOW + 6, 0) is True


def test_resighting_before_expire_survives_the_old_index_entry() -> None:
    d = dedup()
    d.is_duplicate("ev_a", T0, 0)
    later = T0 + WINDOW + 50  # after the window, before any expire() ran
    assert d.is_duplicate("ev_a", later, 0) is False
    # The first sighting's index entry is due; it must not delete the newer sighting.
    assert d.expire(T0 + WINDOW + 60, 0) == 0
    assert d.store["ev_a"] == seen_value(later, 0)
    assert d.is_duplicate("ev_a", later + WINDOW - 1, 0) is True
    assert d.expire(later + WINDOW, 0) == 1
    assert d.store == {}


def test_rebuild_from_the_store_reproduces_expiry() -> None:
    rng = random.Random(7)
    live_store: dict[str, Any] = {}
    live = dedup(live_store)
    times = sorted(T0 + rng.randrange(0, 500) for _ in range(200))  # record time moves forward
    for i, now in enumerate(times):
        live.is_duplicate(f"ev_{i % 150}", now, i % 150 % 3)
    # A restart: a new Deduplicator over a copy of the changelog-backed mapping.
    items = list(live_store.items())
    rng.shuffle(items)
    restored = dedup(dict(items))
    restored.rebuild(items)
    assert len(restored) == len(live_store)
    for now in range(T0 + WINDOW, T0 + WINDOW + 520, 40):
        for partition in range(3):
            assert restored.expire(now, partition) == live.expire(now, partition)
            assert restored.store == live_store
    assert restored.store == {}


def test_out_of_order_sightings_are_never_expired_early() -> None:
    d = dedup()
    d.is_duplicate("late-stamp", T0 + 100, 0)
    d.is_duplicate("early-stamp", T0, 0)  # another ingest's older received_at, queued behind
    removed = d.expire(T0 + WINDOW + 50, 0)
    assert "late-stamp" in d.store  # only WINDOW - 50 s old: must stay
    assert removed == (0 if "early-stamp" in d.store else 1)  # may wait behind the head
    assert d.expire(T0 + WINDOW + 100, 0) + removed == 2
    assert d.store == {}


def test_rebuild_replaces_the_previous_index() -> None:
    store: dict[str, Any] = {}
    d = dedup(store)
    d.is_duplicate("gone", T0, 0)
    del store["gone"]  # e.g. a rebalance took the partition's rows away
    store["kept"] = seen_value(T0 + 10, 0)
    d.rebuild(store.items())
    assert len(d) == 1
    assert d.expire(T0 + WINDOW + 10, 0) == 1
    assert store == {}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sight", "expire"]),
            st.integers(0, 7),  # event id
            st.integers(0, 2),  # partition of the id (fixed per id below)
            st.integers(0, 400),  # time step
        ),
        max_size=60,
    )
)
def test_matches_a_model_of_first_sightings(ops: list[tuple[str, int, int, int]]) -> None:
    """Monotonic record time: answers and the store equal a direct model of the rules."""
    d = dedup()
    model: dict[str, tuple[int, int]] = {}  # id -> (first_seen, partition)
    now = T0
    for op, ident, partition, step in ops:
        now += step
        event_id = f"ev_{ident}"
        if op == "sight":
            part = ident % 3  # one id always lands on one partition, as keys do
            seen = model.get(event_id)
            expected = seen is not None and now - seen[0] < WINDOW
            assert d.is_duplicate(event_id, now, part) is expected
            if not expected:
                model[event_id] = (now, part)
        else:
            old = [k for k, (t, p) in model.items() if p == partition and now - t >= WINDOW]
            assert d.expire(now, partition) == len(old)
            for key in old:
                del model[key]
        assert d.store == {k: seen_value(t, p) for k, (t, p) in model.items()}


def test_a_changelog_of_format_1_is_read_and_rewritten_in_format_2() -> None:
    """Values written before format 2 were [first_seen, partition] lists: a worker restored from
    such a changelog dedups and expires them as before; an id written again is an int."""
    old = {"ev_old": [T0, 1], "ev_other": [T0 + 100, 2]}
    store: dict[str, Any] = dict(old)
    d = dedup(store)
    d.rebuild(old.items())
    assert len(d) == 2
    assert d.is_duplicate("ev_old", T0 + 5, 1) is True
    assert d.due(T0 + WINDOW, 1) and not d.due(T0 + WINDOW, 2)
    assert d.expire(T0 + WINDOW, 1) == 1 and "ev_old" not in store
    assert d.is_duplicate("ev_old", T0 + WINDOW + 1, 1) is False
    assert store["ev_old"] == seen_value(T0 + WINDOW + 1, 1)
    assert (first_seen_of(store["ev_other"]), partition_of_seen(store["ev_other"])) == (T0 + 100, 2)
    assert (first_seen_of(store["ev_old"]), partition_of_seen(store["ev_old"])) == (
        T0 + WINDOW + 1,
        1,
    )
