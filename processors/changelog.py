"""The worker's changelog-backed tables: what a commit writes, what a restore loads.

Every table writes to the app's one changelog topic, `<app id>-changelog`, its records keyed
`<table>:<key>`: partition p holds task p's state, so a transaction of task p writes one
partition of it whatever the number of tables (docs/design.md, "One changelog for all the
tables").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cfn.processors.dedup import partition_of_seen
from cfn.schemas import jsonio


def partition_of(value: Any) -> int:
    """Every table value names its partition: {"p": p, ...}, a dedup value (an int, or the list
    of format 1, see processors/dedup.py), or an object with a `p` attribute."""
    kind = type(value)
    if kind is dict:
        return int(value["p"])
    if kind is int or kind is list:
        return partition_of_seen(value)
    return int(value.p)


def _decode_json(data: bytes) -> Any:
    return jsonio.loads(data)


class ChangelogTable(dict[str, Any]):
    """A dict that remembers, per partition, which keys changed since the last drain.

    The pipeline reads and writes it like any mapping; the engine drains the changed keys into
    the changelog inside the partition's transaction (one record per key per commit, however
    often the key changed), and loads it back from the changelog on restore. Every table shares
    the app's one changelog topic, its records keyed `<name>:<key>` (`prefix` + key). Reads are
    plain dict reads, at C speed (the worker reads its tables several times per event); writes
    go through `__setitem__`/`__delitem__`, and the bulk writers that would bypass them refuse.
    """

    def __init__(
        self,
        name: str,
        encode: Callable[[Any], bytes] = jsonio.dumps,
        decode: Callable[[bytes], Any] = _decode_json,
    ) -> None:
        super().__init__()
        if ":" in name:
            raise ValueError(f"a table name cannot hold ':' (it ends the key prefix): {name!r}")
        self.name = name
        self.prefix = f"{name}:".encode()
        # The changelog format of this table's values: `decode` reads every format it ever had.
        self.encode = encode
        self.decode = decode
        self._changed: dict[int, set[str]] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._mark(key, value)

    def __delitem__(self, key: str) -> None:
        self._mark(key, dict.pop(self, key))

    def _mark(self, key: str, value: Any) -> None:
        partition = partition_of(value)
        changed = self._changed.get(partition)
        if changed is None:  # not setdefault: that builds a set on every write
            changed = self._changed[partition] = set()
        changed.add(key)

    def _untracked(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("ChangelogTable: write keys one by one (t[k] = v, del t[k])")

    pop = popitem = setdefault = update = clear = __ior__ = _untracked

    def drain(self, partition: int) -> list[tuple[str, Any]]:
        """(key, value or None for a deletion) for every key of `partition` changed since."""
        keys = self._changed.pop(partition, None)
        if not keys:
            return []
        get = self.get
        return [(key, get(key)) for key in sorted(keys)]

    def load(self, key: str, value: Any) -> None:
        """Apply one changelog record (restore): not a change to write back."""
        if value is None:
            dict.pop(self, key, None)
        else:
            dict.__setitem__(self, key, value)

    def touch(self, partitions: set[int]) -> None:
        """Mark every key of `partitions` changed, so that the next drains write them all (a
        partition migrated from the per-table changelogs is written whole to the shared one)."""
        for key, value in self.items():
            partition = partition_of(value)
            if partition in partitions:
                changed = self._changed.get(partition)
                if changed is None:
                    changed = self._changed[partition] = set()
                changed.add(key)

    def drop(self, partitions: set[int]) -> None:
        """Forget the state of partitions this worker no longer owns (or must restore)."""
        for key in [k for k, v in self.items() if partition_of(v) in partitions]:
            dict.__delitem__(self, key)
        for partition in partitions:
            self._changed.pop(partition, None)


def changelog_records(
    tables: Iterable[ChangelogTable], partition: int
) -> Iterator[tuple[bytes, bytes | None]]:
    """What a commit of `partition` writes to the changelog: (record key, encoded value, or None
    for a deletion) for every key of the partition changed since the last drain, table by
    table. Each table is drained as its turn comes."""
    for table in tables:
        prefix = table.prefix
        for key, value in table.drain(partition):
            yield prefix + key.encode(), None if value is None else table.encode(value)
