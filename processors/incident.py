"""One incident's state in the worker's table, and its changelog format.

An open incident is the worker's largest state after the dedup ids, so its value is compact: a
list of fields by position, not a dict of 19 named ones (~650 bytes), and nothing that the
table key (`correlation_key`: tenant, account id, correlation id) or the other fields already
say: the incident id is the hash of the key and the first event id, the close reason follows
from the state. Canonical event ids ("ev_" + 32 hex) are kept as one int; the alert type is an
interned string, one object for every incident of the type.

The value doubles as its own timer: the correlator's heaps order incidents by (deadline, key,
version), the first three fields, so a timer costs one heap slot, not a (deadline, key) tuple.
"""

from __future__ import annotations

import sys
from typing import Any

from cfn.schemas import jsonio

# Field positions. DEADLINE, KEY and V come first: they order the timer heaps (ties in deadline
# fire in key order; two heap entries of one key always differ in version).
DEADLINE = 0  # epoch s of the next timer: expiry, orphan release, or forgetting a closed one
KEY = 1  # the table key; not written to the changelog (it is the record's key)
V = 2  # the version of the last record, 0 while held
P = 3  # the raw partition
ST = 4  # open | held | resolved | expired | orphan_end
TYPE = 5  # alert_type (interned) or None
OPENED = 6  # START ts, None until a START
CLOSED = 7  # END ts or expiry time; while held, the held END's ts
DUR = 8  # END ts - START ts, None until a real END
RENOTIFY = 9  # repeated STARTs while open
FLAGS = 10  # END_BEFORE_START | LATE_END | NO_ACCOUNT
FIRST = 11  # the first event id (compact, see `compact_id`); while held, the held END's
LAST = 12  # the last event id (compact; the same object as FIRST until a second event)
FLAP = 13  # the flap episode this incident is a cycle of, or None
FIELDS = 14

END_BEFORE_START = 1  # ordering: the END came first and was held
LATE_END = 2  # an END arrived after the incident expired
NO_ACCOUNT = 4  # account_id was None (the key holds "" for it, as for an empty one)

FORMAT = 2  # the changelog format written; `decode` also reads format 1


class Incident(list[Any]):
    """The fields above by position. Never changed in place once stored: the changelog writes
    only what is assigned to the table, and a heap entry must keep its order."""

    __slots__ = ()

    @property
    def p(self) -> int:
        """The raw partition: what the changelog table needs of every value."""
        partition: int = self[P]
        return partition


def compact_id(event_id: str) -> int | str:
    """A canonical event id ("ev_" + 32 lowercase hex) as one int (48 bytes against 96 for the
    string); any other id as it is."""
    if len(event_id) == 35 and event_id.startswith("ev_"):
        try:
            value = int(event_id[3:], 16)
        except ValueError:
            return event_id
        if f"ev_{value:032x}" == event_id:  # int() also reads "_", "+" and capitals
            return value
    return event_id


def intern_type(alert_type: str | None) -> str | None:
    """One string object per alert type, however many incidents (and parses) carry it."""
    return None if alert_type is None else sys.intern(alert_type)


def full_id(compact: int | str) -> str:
    """The event id that `compact_id` made `compact` of."""
    return compact if type(compact) is str else f"ev_{compact:032x}"


def encode(state: Incident) -> bytes:
    """Changelog format 2: `[2, deadline, v, p, st, type, opened, closed, dur, renotify, flags,
    first, last, flap]`, the fields by position without the key, event ids in full."""
    fields = [FORMAT, state[DEADLINE], *state[V:]]  # fields from V on at their own positions
    fields[FIRST] = full_id(state[FIRST])
    fields[LAST] = full_id(state[LAST])
    return jsonio.dumps(fields)


def decode(data: bytes) -> Incident:
    """Either format. The key is left None: `Correlator.rebuild` sets the table's own.

    Format 1 (before the compact state) was the dict {"st", "id", "v", "p", "tenant", "acc",
    "type", "corr", "opened", "closed", "dur", "reason", "renotify", "ordering", "late_end",
    "first", "last", "deadline"}, with "held": {"event_id", "ts"} while held and "flap" once
    marked; the fields left out since follow from the key and the others.
    """
    value = jsonio.loads(data)
    if type(value) is dict:
        return _from_format_1(value)
    if value[0] != FORMAT:
        raise ValueError(f"incident changelog format {value[0]!r}: this worker reads 1 and 2")
    state = Incident([value[1], None, *value[V:]])
    state[TYPE] = intern_type(state[TYPE])
    first = state[FIRST] = compact_id(value[FIRST])
    state[LAST] = first if value[LAST] == value[FIRST] else compact_id(value[LAST])
    return state


def _from_format_1(old: dict[str, Any]) -> Incident:
    held = old.get("held")
    flags = (
        (END_BEFORE_START if old["ordering"] == "end_before_start" else 0)
        | (LATE_END if old["late_end"] else 0)
        | (NO_ACCOUNT if old["acc"] is None else 0)
    )
    first = compact_id(old["first"])
    return Incident(
        [
            old["deadline"],
            None,
            old["v"],
            old["p"],
            old["st"],
            intern_type(old["type"]),
            old["opened"],
            old["closed"] if held is None else held["ts"],
            old["dur"],
            old["renotify"],
            flags,
            first,
            first if old["last"] == old["first"] else compact_id(old["last"]),
            old.get("flap"),
        ]
    )
