"""Rate anomalies per (account_id, alert_type): an EWMA baseline of final window counts, with
hysteresis.

Input: the *final* count of each tumbling window of one size (`window_s`), per (account_id,
alert_type), as the rate counter forgets it (its lateness passed, so no correction can follow).
Judging final counts, not first emissions, makes the verdicts independent of when late events
arrived: a replay over the same range sees the same counts and decides the same anomalies.

The baseline is an exponentially weighted moving average of past windows' counts, with
`alpha = 2 / (span + 1)`:
* windows with no events count as zeros (the key's windows are judged in order, gaps included),
  so a key that goes quiet lowers its baseline as it should;
* it starts at the first window's count, and no window is judged before `warmup` windows of
  history, so a new account's first burst is not an anomaly;
* a count above `factor x baseline` is learned as `factor x baseline` (clipped), so a spike
  does not inflate the baseline it is judged against, while a lasting step up is still learned
  within a few windows (the anomaly then closes and the new level is normal);
* `floor` bounds the baseline from below when judging, so a key that is almost always quiet does
  not fire on a handful of events (`min_count` also guards that).

Opening: a judged window with `count >= min_count` and `count >= factor x max(baseline, floor)`.
Closing (the hysteresis): `clear_windows` windows in a row with `count <= clear_factor x
max(baseline, floor)`, empty windows included; a window in between resets the calm run.

Forgetting: a key with no anomaly open and no events for `forget_after` windows (by then its
baseline has decayed to nothing) starts afresh, warm-up included, and its entry is deleted as
the watermark passes that point; the rule is the same whether or not the entry was deleted yet,
so the live run and a replay agree.

The mapping (a changelog table in the worker) is the only truth: '["account_type","<type>",
"<account>"]' -> {"p", "type", "acc", "b" (baseline), "first", "last" (window starts), "open":
null | {"id", "start", "peak", "calm", "base"}}. Pure: no clock, no Kafka.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cfn.schemas.records import AnomalyRecord, short_hash

State = dict[str, Any]
_NEGLIGIBLE = 1e-9  # a baseline this small is zero: decay stops, live and replay agree exactly


@dataclass(frozen=True)
class AnomalyPolicy:
    """When a window count is anomalous (see the module docstring); CFN_ANOMALY_* settings."""

    window_s: int = 300
    factor: float = 5.0
    min_count: int = 10
    span: int = 12
    warmup: int = 12
    floor: float = 1.0
    clear_factor: float = 1.5
    clear_windows: int = 3

    @property
    def alpha(self) -> float:
        return 2.0 / (self.span + 1)

    @property
    def forget_after(self) -> int:
        """Quiet windows after which a key starts afresh: (1 - alpha)^n is below 1e-9 by then."""
        return 10 * self.span + 10


@dataclass
class AnomalyDetector:
    """Judges final window counts per key, in window order; returns open and close records."""

    store: MutableMapping[str, State]
    policy: AnomalyPolicy
    _open: dict[int, set[str]] = field(default_factory=dict)  # partition -> keys with one open
    # partition -> heap of (forget at, key): one entry per key, moved on when it comes due
    _quiet: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    _queued: set[str] = field(default_factory=set)

    def rebuild(self, items: Iterable[tuple[str, State]]) -> None:
        self._open = {}
        self._quiet = {}
        self._queued = set()
        for key, state in items:
            self._index(key, state)

    def _forget_at(self, state: State) -> int:
        return int(state["last"]) + (self.policy.forget_after + 1) * self.policy.window_s

    def _index(self, key: str, state: State) -> None:
        keys = self._open.setdefault(state["p"], set())
        if state["open"] is None:
            keys.discard(key)
        else:
            keys.add(key)
        if key not in self._queued:
            self._queued.add(key)
            heapq.heappush(self._quiet.setdefault(state["p"], []), (self._forget_at(state), key))

    def open_count(self, partition: int | None = None) -> int:
        if partition is not None:
            return len(self._open.get(partition, ()))
        return sum(len(keys) for keys in self._open.values())

    def open_by_type(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for keys in self._open.values():
            for key in keys:
                alert_type = self.store[key]["type"]
                counts[alert_type] = counts.get(alert_type, 0) + 1
        return counts

    # ---- inputs -----------------------------------------------------------------------------

    def observe(
        self,
        key: str,
        alert_type: str | None,
        account_id: str | None,
        start: int,
        count: int,
        partition: int,
    ) -> list[AnomalyRecord]:
        """The final count of the window starting at `start`; windows before it that were never
        seen had no events and are judged as zeros first."""
        w = self.policy.window_s
        state = self.store.get(key)
        if state is not None and state["open"] is None and start >= self._forget_at(state):
            state = None  # quiet for forget_after windows: afresh (deleted or not yet)
        if state is None:
            state = {
                "p": partition,
                "type": alert_type,
                "acc": account_id,
                "b": float(count),
                "first": start,
                "last": start - w,
                "open": None,
            }
        else:
            state = {**state}
            if start <= state["last"]:
                return []  # judged already (a window is final once)
        out = self._zeros(state, start - w)
        out += self._judge(state, start, count)
        self._save(key, state)
        return out

    def advance(self, partition: int, watermark: int, lateness_s: int) -> list[AnomalyRecord]:
        """The rate watermark of `partition` moved: every window that ended `lateness_s` before
        it is final, and a key with an open anomaly and no events in such windows had zeros
        there. Judges those zeros, which closes quiet anomalies; other keys wait for their next
        window (`observe` judges the gap the same way)."""
        w = self.policy.window_s
        final_before = watermark - lateness_s - w  # the last window start that is final
        last_final = final_before - final_before % w
        quiet = self._quiet.get(partition, [])
        while quiet and quiet[0][0] <= last_final:
            _due, key = heapq.heappop(quiet)
            state = self.store.get(key)
            if state is None:
                self._queued.discard(key)
            elif state["open"] is None and self._forget_at(state) <= last_final:
                del self.store[key]
                self._queued.discard(key)
            else:  # seen since, or open: due later
                due = max(self._forget_at(state), last_final + self.policy.window_s)
                heapq.heappush(quiet, (due, key))
        out: list[AnomalyRecord] = []
        for key in sorted(self._open.get(partition, ())):
            state = {**self.store[key]}
            if last_final <= state["last"]:
                continue
            out += self._zeros(state, last_final)
            self._save(key, state)
        return out

    # ---- the judgement ----------------------------------------------------------------------

    def _zeros(self, state: State, through: int) -> list[AnomalyRecord]:
        """Judge the empty windows after the last judged one, up to and including `through`.
        Stops early once nothing can change any more (no anomaly open, baseline zero)."""
        w = self.policy.window_s
        out: list[AnomalyRecord] = []
        start = state["last"] + w
        while start <= through:
            if state["open"] is None and state["b"] == 0.0:
                state["last"] = through  # more zeros change nothing
                break
            out += self._judge(state, start, 0)
            start += w
        return out

    def _judge(self, state: State, start: int, count: int) -> list[AnomalyRecord]:
        p = self.policy
        baseline = state["b"]
        reference = max(baseline, p.floor)
        history = (start - state["first"]) // p.window_s
        out: list[AnomalyRecord] = []
        episode = state["open"]
        if episode is None:
            if history >= p.warmup and count >= p.min_count and count >= p.factor * reference:
                episode = {
                    "id": "an_"
                    + short_hash(
                        state["type"] or "", state["acc"] or "", str(p.window_s), str(start)
                    ),
                    "start": start,
                    "peak": count,
                    "calm": 0,
                    "base": baseline,
                }
                state["open"] = episode
                out.append(self._record(state, episode, "open", start, count, baseline))
        elif count <= p.clear_factor * reference:
            episode = state["open"] = {**episode, "calm": episode["calm"] + 1}
            if episode["calm"] >= p.clear_windows:
                out.append(self._record(state, episode, "closed", start, count, baseline))
                state["open"] = None
        else:
            state["open"] = {**episode, "calm": 0, "peak": max(episode["peak"], count)}
        learned = min(count, p.factor * reference) if history >= p.warmup else count
        updated = baseline + p.alpha * (learned - baseline)
        state["b"] = 0.0 if updated < _NEGLIGIBLE else updated
        state["last"] = start
        return out

    def _record(
        self,
        state: State,
        episode: State,
        kind: str,
        start: int,
        count: int,
        baseline: float,
    ) -> AnomalyRecord:
        p = self.policy
        reference = max(baseline, p.floor)
        return AnomalyRecord(
            anomaly_id=episode["id"],
            state=kind,
            alert_type=state["type"],
            account_id=state["acc"],
            window_s=p.window_s,
            opened_window_start=episode["start"],
            window_start=start,
            window_end=start + p.window_s,
            count=count,
            baseline=round(baseline, 6),
            ratio=round(count / reference, 6),
            threshold=p.factor,
            opening_baseline=round(episode["base"], 6),
            peak_count=episode["peak"],
            windows=(start - episode["start"]) // p.window_s + 1,
        )

    def _save(self, key: str, state: State) -> None:
        self.store[key] = state
        self._index(key, state)
