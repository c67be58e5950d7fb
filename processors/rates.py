"""Counting unique events in event-time tumbling windows, with lateness and revisions."""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from cfn.schemas import jsonio
from cfn.schemas.records import RateRecord, short_hash

State = dict[str, Any]
WATERMARK_PREFIX = "wm|"


@dataclass
class RateResult:
    records: list[RateRecord] = field(default_factory=list)
    dropped_late: dict[int, int] = field(default_factory=dict)  # window_s -> events dropped


def window_label(window_s: int, start: int) -> str:
    """A window's name in the table: "<window_s>:<start>"."""
    return f"{window_s}:{start}"


def parse_window_label(label: str) -> tuple[int, int]:
    """(window_s, start) of a window's name in the table."""
    window_s, start = label.split(":")
    return int(window_s), int(start)


@dataclass
class RateCounter:
    """Tumbling-window counts per alert_type and per (account_id, alert_type), over a mapping.

    Windows follow event time. A partition's watermark is the highest `ts` it has seen (or,
    once the partition has been idle for `idle_after_s`, wall time minus `idle_delay_s`, so a
    quiet stream still closes its windows). A window is emitted (revision 1) when the
    watermark reaches its end, corrected (revision n+1) by each `add` arriving within
    `lateness_s` after that (one event, or a sum of events at one rounded ts), and forgotten
    after; later events are counted as dropped-late.

    The watermark is stored quantised to the gcd of the windows and the lateness: every
    decision compares it with window ends (+ lateness), all multiples of that gcd, so the
    quantised value decides exactly as the precise one and needs a write only once per step.
    There is no windowed table and no window-close callback: the mapping plus an explicit,
    rebuildable heap of window ends is all the state.

    With `final_window` set, the final count of every (account_id, alert_type) window of that
    size is appended to `finals` as its lateness passes (for the anomaly detector).

    Mapping layout: '["<scope>","<alert_type>"(,"<account_id>")]' -> {"p": partition, "scope",
    "type", "acc", "w": {"<window_s>:<start>": [count, revision]}}, and "wm|<p>" -> {"wm": s}.
    """

    store: MutableMapping[str, State]
    windows: tuple[int, ...]
    lateness_s: int
    idle_after_s: float = 5.0
    idle_delay_s: float = 5.0
    final_window: int = 0  # account_type windows of this size are kept in `finals` when final
    # (table key, state, window start, count), drained by the caller (processors/anomaly.py)
    finals: list[tuple[str, State, int, int]] = field(default_factory=list)
    _heaps: dict[int, list[tuple[int, str, str]]] = field(default_factory=dict)
    _marks: dict[int, int] = field(default_factory=dict)
    _last_event: dict[int, float] = field(default_factory=dict)

    @functools.cached_property
    def step(self) -> int:
        return reduce(math.gcd, (*self.windows, self.lateness_s or self.windows[0]))

    # ---- recovery ---------------------------------------------------------------------------

    def rebuild(self, items: Iterable[tuple[str, State]]) -> None:
        """Re-derive watermarks and the window-end heaps from the mapping's contents."""
        self._heaps = {}
        self._marks = {}
        for key, state in items:
            if key.startswith(WATERMARK_PREFIX):
                self._marks[int(key[len(WATERMARK_PREFIX) :])] = state["wm"]
                continue
            for label, (_count, revision) in state["w"].items():
                self._push(state["p"], key, label, revision)

    @staticmethod
    @functools.lru_cache(maxsize=65536)
    def _key(*parts: str) -> str:
        """JSON arrays as keys: no alert_type or account_id value can collide with another."""
        return jsonio.dumps(parts).decode()

    def quantise(self, ts: int) -> int:
        """`ts` rounded down to a multiple of `step`: the same windows, the same decisions."""
        return ts - ts % self.step

    def watermark(self, partition: int) -> int:
        return self._marks.get(partition, 0)

    def _push(self, partition: int, key: str, label: str, revision: int) -> None:
        window_s, start = parse_window_label(label)
        due = start + window_s + (self.lateness_s if revision > 0 else 0)
        heapq.heappush(self._heaps.setdefault(partition, []), (due, key, label))

    # ---- events and ticks -------------------------------------------------------------------

    def add(
        self,
        alert_type: str | None,
        account_id: str | None,
        ts: int,
        partition: int,
        now: float,
        n: int = 1,
    ) -> RateResult:
        """Count `n` unique events at `ts`; returns the corrections and emissions they caused.

        Events whose ts share a multiple of `step` fall in the same window of every size and
        make the same watermark decisions, so callers may pre-sum them (see `quantise`).
        """
        result = RateResult()
        self._last_event[partition] = now
        mark = self.watermark(partition)
        for key, scope, account in self._scopes(alert_type, account_id):
            state = self.store.get(key)
            state = (
                {"p": partition, "scope": scope, "type": alert_type, "acc": account, "w": {}}
                if state is None
                else {**state, "w": dict(state["w"])}  # a copy: the mapping sees one write
            )
            if self._count(state, key, ts, n, mark, partition, result):
                self.store[key] = state
        if ts > mark:
            result.records.extend(self._advance(partition, ts))
        return result

    def _scopes(
        self, alert_type: str | None, account_id: str | None
    ) -> tuple[tuple[str, str, str | None], ...]:
        """(table key, scope, account) of the two counts an event adds to."""
        return (
            (self._key("type", alert_type or ""), "type", None),
            (
                self._key("account_type", alert_type or "", account_id or ""),
                "account_type",
                account_id,
            ),
        )

    def _count(
        self,
        state: State,
        key: str,
        ts: int,
        n: int,
        mark: int,
        partition: int,
        result: RateResult,
    ) -> bool:
        """Add `n` to every window of `state` that holds `ts`; False if none still counts."""
        changed = False
        for window_s in self.windows:
            start = ts - ts % window_s
            if start + window_s + self.lateness_s <= mark:  # past lateness: final
                if state["scope"] == "type":
                    result.dropped_late[window_s] = result.dropped_late.get(window_s, 0) + n
                continue
            label = window_label(window_s, start)
            count, revision = state["w"].get(label, (0, 0))
            count += n
            window = (partition, key, label, window_s, start)
            revision = self._revision(state, window, count, n, revision, mark, result)
            state["w"][label] = [count, revision]
            changed = True
        return changed

    def _revision(
        self,
        state: State,
        window: tuple[int, str, str, int, int],
        count: int,
        n: int,
        revision: int,
        mark: int,
        result: RateResult,
    ) -> int:
        """The window's revision once `n` more events are counted, emitting what that emits:

        * already emitted: a correction, revision + 1;
        * closed by the watermark but never seen before: emitted now, revision 1;
        * still open: not emitted (0), its end scheduled when these are its first events.
        """
        partition, key, label, window_s, start = window
        if revision > 0:
            result.records.append(self._record(state, window_s, start, count, revision + 1))
            return revision + 1
        if start + window_s <= mark:
            result.records.append(self._record(state, window_s, start, count, 1))
            self._push(partition, key, label, 1)
            return 1
        if count == n:
            self._push(partition, key, label, 0)
        return 0

    def tick(self, now: float, partition: int) -> list[RateRecord]:
        """Advance an idle partition's watermark to wall time and close what that closes."""
        last = self._last_event.get(partition)
        if last is None:
            self._last_event[partition] = now
            return []
        if now - last < self.idle_after_s:
            return []
        return self._advance(partition, int(now - self.idle_delay_s))

    def close_all(self, partition: int, now: int) -> list[RateRecord]:
        """Move the watermark to `now` regardless of idleness: the end of a replay."""
        return self._advance(partition, now)

    def _advance(self, partition: int, to: int) -> list[RateRecord]:
        step = self.step
        quantised = to - to % step
        if quantised <= self.watermark(partition):
            return []
        self._marks[partition] = quantised
        self.store[f"{WATERMARK_PREFIX}{partition}"] = {"wm": quantised, "p": partition}
        out: list[RateRecord] = []
        heap = self._heaps.get(partition, [])
        touched: dict[str, State] = {}
        while heap and heap[0][0] <= quantised:
            _due, key, label = heapq.heappop(heap)
            state = touched.get(key) or self.store.get(key)
            if state is None or label not in state["w"]:
                continue
            if key not in touched:
                state = {**state, "w": dict(state["w"])}
                touched[key] = state
            count, revision = state["w"][label]
            window_s, start = parse_window_label(label)
            if revision == 0:
                state["w"][label] = [count, 1]
                out.append(self._record(state, window_s, start, count, 1))
                self._push(partition, key, label, 1)
            else:
                del state["w"][label]  # past lateness: final, forget it
                if window_s == self.final_window and state["scope"] == "account_type":
                    self.finals.append((key, state, start, count))
        for key, state in touched.items():
            if state["w"]:
                self.store[key] = state
            else:
                del self.store[key]
        return out

    @staticmethod
    def _record(state: State, window_s: int, start: int, count: int, revision: int) -> RateRecord:
        account = state["acc"] if state["scope"] == "account_type" else None
        return RateRecord(
            rate_id="rt_"
            + short_hash(
                state["scope"], state["type"] or "", account or "", str(start), str(window_s)
            ),
            revision=revision,
            scope=state["scope"],
            alert_type=state["type"],
            account_id=account,
            window_start=start,
            window_end=start + window_s,
            window_s=window_s,
            count=count,
            rate_per_min=round(count * 60 / window_s, 6),
        )
