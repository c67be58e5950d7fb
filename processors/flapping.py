"""Flapping: the same thing opening again and again, across incidents of one *flap key*.

Cloudflare gives each episode of a problem its own correlation id, so flapping is invisible in
one incident; it shows across the incidents of one flap key: (tenant, account_id, policy_id,
alert_type). Incidents of one flap key live on different raw partitions (their keys hold the
correlation id), so the worker repartitions their openings (through its internal repartition
topic, in the same transactions as everything else) to the partition of their alert type, which
holds every flap key of that type, and this detector runs there.

Rules (`FlapPolicy`):
* **entering**: when `min_cycles` incidents of one flap key have opened within `window_s`
  (event time: the START's `ts`), an episode opens. Those incidents are its first cycles.
* **staying**: every incident that opens while the episode is open is one more cycle.
* **leaving** (the hysteresis): `quiet_s` with no new opening. The episode ends at the last
  opening + `quiet_s`, and the openings counted so far are forgotten, so a new episode needs
  `min_cycles` fresh ones.

Openings are judged in event-time order, not arrival order: they wait (in the mapping) until
the partition's watermark, minus the lateness, has passed their `ts`, and are then taken in
(ts, incident_id) order. Openings from many raw partitions arrive interleaved differently in
every run; this makes the live run and a replay decide the same episodes. An opening that
arrives after the watermark passed it is judged at once, in arrival order (as for late rate
events, that is the only order-dependent case).

Outputs: `FlapRecord`s (start and end, with a deterministic `flap_id`) and `FlapMark`s: which
incident belongs to which episode, sent back to the incident's own partition so that its next
version carries `flap_id`.

Mapping (a changelog table in the worker), every value with "p" (the partition):
* 'k|<flap key JSON>' -> {"p", "key": [tenant, account, policy, type], "opens": [[ts, incident
  id, correlation key, raw partition], ...] (at most min_cycles, newest last), "ep": null |
  {"id", "start", "first", "last", "last_ts", "cycles"}}
* 'q|<incident id>' -> {"p", "ts", "key", "i", "c", "rp"}: an opening not yet judged.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cfn.schemas import jsonio
from cfn.schemas.records import FlapRecord, short_hash

State = dict[str, Any]
KEY_PREFIX, PENDING_PREFIX = "k|", "q|"


@dataclass(frozen=True)
class FlapPolicy:
    """CFN_FLAP_MIN_CYCLES, CFN_FLAP_WINDOW and CFN_FLAP_QUIET."""

    min_cycles: int = 4
    window_s: int = 3600
    quiet_s: int = 1800


@dataclass(frozen=True, slots=True)
class FlapMark:
    """Incident `incident_id` (table key `correlation_key`, on raw partition `partition`) is a
    cycle of flap episode `flap_id`."""

    partition: int
    correlation_key: str
    incident_id: str
    flap_id: str


@dataclass
class FlapResult:
    records: list[FlapRecord] = field(default_factory=list)
    marks: list[FlapMark] = field(default_factory=list)


def flap_key(
    tenant: str, account_id: str | None, policy_id: str | None, alert_type: str | None
) -> str:
    """The detector's table key of one flap key (JSON: no field value can forge another's)."""
    return (
        KEY_PREFIX
        + jsonio.dumps([tenant, account_id or "", policy_id or "", alert_type or ""]).decode()
    )


@dataclass
class FlapDetector:
    store: MutableMapping[str, State]
    policy: FlapPolicy
    _pending: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # (ts, incident)
    _quiet: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # (due, key)
    open_by_type: Counter[str] = field(default_factory=Counter)

    def rebuild(self, items: Iterable[tuple[str, State]]) -> None:
        self._pending = {}
        self._quiet = {}
        self.open_by_type = Counter()
        for key, state in items:
            if key.startswith(PENDING_PREFIX):
                heapq.heappush(self._pending.setdefault(state["p"], []), (state["ts"], state["i"]))
            else:
                self._schedule(key, state)
                if state["ep"] is not None:
                    self.open_by_type[state["key"][3]] += 1

    def enqueue(
        self,
        key: list[str],
        ts: int,
        incident_id: str,
        correlation_key: str,
        raw_partition: int,
        partition: int,
    ) -> None:
        """An incident of flap key `key` opened at `ts`; judged once the watermark passes."""
        self.store[PENDING_PREFIX + incident_id] = {
            "p": partition,
            "ts": ts,
            "key": key,
            "i": incident_id,
            "c": correlation_key,
            "rp": raw_partition,
        }
        heapq.heappush(self._pending.setdefault(partition, []), (ts, incident_id))

    def advance(self, partition: int, now: int) -> FlapResult:
        """Judge the openings up to `now` (the watermark minus the lateness) in event-time order;
        then end the episodes quiet since `now - quiet_s`, and forget idle keys."""
        result = FlapResult()
        pending = self._pending.get(partition, [])
        while pending and pending[0][0] <= now:
            _ts, incident_id = heapq.heappop(pending)
            item = self.store.get(PENDING_PREFIX + incident_id)
            if item is not None:
                del self.store[PENDING_PREFIX + incident_id]
                self._opening(item, result)
        quiet = self._quiet.get(partition, [])
        while quiet and quiet[0][0] <= now:
            due, key = heapq.heappop(quiet)
            state = self.store.get(key)
            if state is None or self._due(state) != due:
                continue  # changed since; its own entry is queued
            if state["ep"] is not None:
                state = {**state}
                self._end(state, result)
                self.store[key] = state
                self._schedule(key, state)
            else:
                del self.store[key]
        return result

    # ---- the rules --------------------------------------------------------------------------

    def _opening(self, item: State, result: FlapResult) -> None:
        p = self.policy
        key_fields = item["key"]
        key = flap_key(*key_fields)
        ts = int(item["ts"])
        state = self.store.get(key)
        state = (
            {"p": item["p"], "key": key_fields, "opens": [], "ep": None}
            if state is None
            else {**state}
        )
        episode = state["ep"]
        if episode is not None and ts >= episode["last_ts"] + p.quiet_s:
            self._end(state, result)
            episode = None
        cycle = [ts, item["i"], item["c"], item["rp"]]
        if episode is not None:
            state["ep"] = {
                **episode,
                "last": item["i"],
                "last_ts": max(episode["last_ts"], ts),
                "cycles": episode["cycles"] + 1,
            }
            result.marks.append(FlapMark(item["rp"], item["c"], item["i"], episode["id"]))
        else:
            opens = [o for o in state["opens"] if o[0] > ts - p.window_s] + [cycle]
            state["opens"] = opens[-p.min_cycles :]
            if len(state["opens"]) >= p.min_cycles:
                self._start(state, result)
        self.store[key] = state
        self._schedule(key, state)

    def _start(self, state: State, result: FlapResult) -> None:
        opens = state["opens"]
        first, last = opens[0], opens[-1]
        flap_id = "fl_" + short_hash(*state["key"], str(first[0]), first[1])
        state["ep"] = {
            "id": flap_id,
            "start": last[0],
            "first": first[1],
            "last": last[1],
            "last_ts": max(o[0] for o in opens),
            "cycles": len(opens),
        }
        state["opens"] = []
        self.open_by_type[state["key"][3]] += 1
        result.records.append(self._record(state, "start", None))
        for _ts, incident_id, correlation_key, raw_partition in opens:
            result.marks.append(FlapMark(raw_partition, correlation_key, incident_id, flap_id))

    def _end(self, state: State, result: FlapResult) -> None:
        ended_at = state["ep"]["last_ts"] + self.policy.quiet_s
        result.records.append(self._record(state, "end", ended_at))
        self.open_by_type[state["key"][3]] -= 1
        state["ep"] = None
        state["opens"] = []

    def _due(self, state: State) -> int:
        """When the key next needs the clock: its episode's end, or when its openings are all
        older than the window (then it is forgotten)."""
        if state["ep"] is not None:
            return int(state["ep"]["last_ts"]) + self.policy.quiet_s
        newest = max((o[0] for o in state["opens"]), default=0)
        return int(newest) + self.policy.window_s

    def _schedule(self, key: str, state: State) -> None:
        heapq.heappush(self._quiet.setdefault(state["p"], []), (self._due(state), key))

    def _record(self, state: State, kind: str, ended_at: int | None) -> FlapRecord:
        tenant, account, policy, alert_type = state["key"]
        episode = state["ep"]
        return FlapRecord(
            flap_id=episode["id"],
            state=kind,
            tenant=tenant,
            account_id=account or None,
            policy_id=policy or None,
            alert_type=alert_type or None,
            started_at=episode["start"],
            ended_at=ended_at,
            cycles=episode["cycles"],
            first_incident_id=episode["first"],
            last_incident_id=episode["last"],
            window_s=self.policy.window_s,
            quiet_s=self.policy.quiet_s,
        )
