"""processors.changelog.ChangelogTable: what a commit writes, a restore loads, a move drops."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cfn.processors.dedup import seen_value
from cfn.processors.engine import ChangelogTable


def table() -> ChangelogTable:
    return ChangelogTable("incidents")


def test_drain_gives_each_changed_key_once_with_its_latest_value() -> None:
    t = table()
    t["a"] = {"p": 1, "v": 1}
    t["a"] = {"p": 1, "v": 2}
    t["b"] = {"p": 2, "v": 1}
    assert t.drain(1) == [("a", {"p": 1, "v": 2})]
    assert t.drain(1) == []  # drained: the next commit writes nothing for it
    assert t.drain(2) == [("b", {"p": 2, "v": 1})]


def test_a_deletion_drains_as_a_tombstone() -> None:
    t = table()
    t["a"] = seen_value(100, 3)  # a dedup value: first_seen and partition in one int
    t.drain(3)
    del t["a"]
    assert "a" not in t
    assert t.drain(3) == [("a", None)]


def test_set_then_delete_between_commits_is_one_tombstone() -> None:
    t = table()
    t["a"] = {"p": 0}
    del t["a"]
    assert t.drain(0) == [("a", None)]


def test_restore_loads_without_marking_changes() -> None:
    t = table()
    t.load("a", {"p": 4, "v": 1})
    t.load("b", {"p": 4, "v": 1})
    t.load("b", None)  # a tombstone later in the changelog
    assert dict(t) == {"a": {"p": 4, "v": 1}}
    assert t.drain(4) == []


def test_drop_forgets_only_the_given_partitions_state_and_pending_changes() -> None:
    t = table()
    t["a"] = {"p": 1}
    t["b"] = {"p": 2}
    t["c"] = [5, 1]
    t.drop({1})
    assert dict(t) == {"b": {"p": 2}}
    assert t.drain(1) == []
    assert t.drain(2) == [("b", {"p": 2})]


def test_writers_that_would_bypass_the_change_tracking_refuse() -> None:
    t = table()
    t["a"] = {"p": 0}
    writes: list[Callable[[], object]] = [
        lambda: t.pop("a"),
        lambda: t.setdefault("b", {"p": 0}),
        lambda: t.update({"b": {"p": 0}}),
        lambda: t.popitem(),
        lambda: t.clear(),
    ]
    for write in writes:
        with pytest.raises(TypeError, match="one by one"):
            write()
    assert dict(t) == {"a": {"p": 0}}
    assert t.get("a") == {"p": 0} and "a" in t and len(t) == 1


def test_touch_marks_every_key_of_the_given_partitions_changed() -> None:
    """A partition migrated from the per-table changelogs is written whole at its next commit."""
    t = table()
    t.load("a", {"p": 1, "v": 1})
    t.load("b", {"p": 1, "v": 2})
    t.load("c", {"p": 2, "v": 3})
    t.touch({1})
    assert t.drain(1) == [("a", {"p": 1, "v": 1}), ("b", {"p": 1, "v": 2})]
    assert t.drain(2) == []


def test_the_key_prefix_names_the_table_in_the_shared_changelog() -> None:
    assert ChangelogTable("state-retention").prefix == b"state-retention:"
    with pytest.raises(ValueError, match="':'"):
        ChangelogTable("a:b")
