"""What happens to one input record: parse, dedup, correlate, count; outputs as plain data.

The engine calls these methods and sends what comes back; nothing here imports Kafka, so the same
code runs in unit tests over dicts, in benchmarks, and in the worker over changelog tables.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cfn.processors.anomaly import AnomalyDetector
from cfn.processors.correlate import Correlator
from cfn.processors.dedup import Deduplicator
from cfn.processors.flapping import FlapDetector, FlapResult
from cfn.processors.incident import Incident
from cfn.processors.incident_state import StateRetention
from cfn.processors.metrics import WorkerMetrics, event_label, type_label
from cfn.processors.rates import RateCounter
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio
from cfn.schemas.catalog import known_ids, record_for
from cfn.schemas.history import (
    HISTORY,
    HISTORY_MARK,
    HISTORY_ORIGIN,
    ORIGIN_HEADER,
    WEBHOOK_ORIGIN,
    bucket_of,
    notification_key,
)
from cfn.schemas.keys import correlation_key, incident_record_key
from cfn.schemas.payload import Notification, Rejected, parse
from cfn.schemas.records import (
    AnomalyRecord,
    DlqRecord,
    EventRecord,
    IncidentRecord,
    RateRecord,
    Source,
    short_hash,
)

_KNOWN = known_ids()


@dataclass(slots=True)
class Output:
    """One record to send: the topic role (events, incidents, ...), key and encoded value
    (None for a tombstone)."""

    role: str
    key: bytes
    value: bytes | None
    partition: int | None = None


def header_map(headers: Iterable[tuple[str, bytes]] | dict[str, bytes] | None) -> dict[str, bytes]:
    if headers is None:
        return {}
    if isinstance(headers, dict):
        return headers
    return dict(headers)


@dataclass
class DlqBrake:
    """Tracks the dead-letter share of recent input; a high share raises an alarm metric.

    Like arroyo's DlqLimit it makes a bad deploy visible instead of letting it quietly
    dead-letter the stream, but it only alarms: dead letters are never dropped.
    """

    sample: int
    threshold: float
    _recent: deque[bool] = field(default_factory=deque)
    _bad: int = 0

    def observe(self, dead: bool) -> None:
        self._recent.append(dead)
        self._bad += dead
        if len(self._recent) > self.sample:
            self._bad -= self._recent.popleft()

    @property
    def ratio(self) -> float:
        return self._bad / len(self._recent) if self._recent else 0.0

    @property
    def alarm(self) -> bool:
        return len(self._recent) >= min(self.sample, 100) and (
            self._bad / len(self._recent) > self.threshold
        )


class Pipeline:
    """The worker's logic over injected state mappings, metrics and clock.

    Args:
        settings: windows, timeouts and topic names.
        dedup_store / incident_store / rate_store: mappings (changelog tables in the worker).
        metrics: where to count.
        clock: epoch seconds; used only for processing lag and rate idleness.
        retention_store: when cfn.incident-state forgets closed incidents (a changelog table
            in the worker; a fresh dict by default).
        anomaly_store: the rate anomaly baselines and open anomalies (likewise).
        flap_store: flap keys' recent openings and episodes, and openings not yet judged
            (likewise).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        dedup_store: MutableMapping[str, Any],
        incident_store: MutableMapping[str, Incident],
        rate_store: MutableMapping[str, dict[str, Any]],
        metrics: WorkerMetrics,
        clock: Callable[[], float],
        retention_store: MutableMapping[str, dict[str, Any]] | None = None,
        anomaly_store: MutableMapping[str, dict[str, Any]] | None = None,
        flap_store: MutableMapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.raw_topic = settings.topic("raw")
        self.dedup = Deduplicator(dedup_store, settings.dedup_window)
        self.correlator = Correlator(
            incident_store,
            stale_after=settings.stale_after_for,
            orphan_hold_s=settings.orphan_end_hold,
            closed_retention_s=settings.dedup_window,
            describe=record_for,
        )
        self.rates = RateCounter(
            rate_store,
            windows=settings.rate_windows,
            lateness_s=settings.rate_lateness,
            idle_after_s=settings.rate_idle_after,
            final_window=settings.anomaly.window_s,
        )
        self.anomalies = AnomalyDetector(
            {} if anomaly_store is None else anomaly_store, settings.anomaly
        )
        self._anomaly_marks: dict[int, int] = {}  # rate partition -> watermark last judged
        self._anomaly_labels: set[str] = set()
        self.flaps = FlapDetector({} if flap_store is None else flap_store, settings.flap)
        self._flap_labels: set[str] = set()
        # Marks go back to the incident's raw partition through the repartition topic, which
        # needs the same partition count (the engine clears this when it is not so).
        self.flap_marks = True
        self.retention = StateRetention(
            {} if retention_store is None else retention_store, settings.incident_state_retention
        )
        self.brake = brake = DlqBrake(settings.dlq_alarm_sample, settings.dlq_alarm_ratio)
        # Read at scrape time, not set per record: a gauge write takes a lock.
        metrics.dlq_ratio.set_function(lambda: brake.ratio)
        metrics.dlq_alarm.set_function(lambda: 1.0 if brake.alarm else 0.0)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._rate_pending: dict[int, dict[tuple[str | None, str | None, int], int]] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, memoised: the per-event path pays a dict lookup, not
        prometheus-client's label validation and lock. Only for series never removed."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # ---- recovery ---------------------------------------------------------------------------

    def rebuild(
        self,
        dedup_items: Iterable[tuple[str, Any]],
        incident_items: Iterable[tuple[str, Incident]],
        rate_items: Iterable[tuple[str, dict[str, Any]]],
        retention_items: Iterable[tuple[str, dict[str, Any]]] = (),
        anomaly_items: Iterable[tuple[str, dict[str, Any]]] = (),
        flap_items: Iterable[tuple[str, dict[str, Any]]] = (),
    ) -> None:
        """Re-derive timers, indexes and gauges from the stores after a restart or rebalance."""
        self.dedup.rebuild(dedup_items)
        self.correlator.rebuild(incident_items)
        self.rates.rebuild(rate_items)
        self.rates.finals.clear()
        self.retention.rebuild(retention_items)
        self.anomalies.rebuild(anomaly_items)
        self.flaps.rebuild(flap_items)
        self._anomaly_marks = {}
        self.metrics.incidents_open.clear()
        self._publish_open()

    # ---- raw records ------------------------------------------------------------------------

    def on_raw(
        self,
        raw: bytes,
        key: bytes | None,
        headers: dict[str, bytes],
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> list[Output]:
        """One record of `cfn.raw` -> events, incidents, rate inputs or a dead letter."""
        tenant = headers.get("cfn-tenant", b"default").decode(errors="replace")
        received_header = headers.get("cfn-received-at")
        received_at = int(received_header) if received_header else int(timestamp_ms)
        source = Source(self.raw_topic, partition, offset)
        key = key or tenant.encode()

        result = parse(raw, tenant, received_at)
        origin = headers.get(ORIGIN_HEADER)
        if origin == HISTORY_MARK:  # a backfill's copy for this partition: no event
            if not isinstance(result, Rejected):
                self._mark(result, partition)
            return []
        dead = isinstance(result, Rejected)
        self.brake.observe(dead)
        if isinstance(result, Rejected):
            self.metrics.dlq.labels(result.reason).inc()
            record = DlqRecord(
                dlq_id="dlq_" + short_hash(source.topic, str(partition), str(offset)),
                reason=result.reason,
                detail=result.detail,
                stage="worker",
                tenant=tenant,
                received_at=received_at,
                source=source,
                raw_b64=DlqRecord.encode_raw(raw),
                raw_size=len(raw),
            )
            return [Output("dlq", key, jsonio.dumps(record))]

        n = result
        label = type_label(n.alert_type)
        if origin == HISTORY:
            self._mark(n, partition)
        if self.dedup.is_duplicate(n.event_id, received_at // 1000, partition) or (
            origin != HISTORY and partition in self.dedup.marked and self._late_original(n)
        ):
            self._child(self.metrics.duplicates, label).inc()
            return []
        return self._unique(
            n, key, source, label, HISTORY_ORIGIN if origin == HISTORY else WEBHOOK_ORIGIN
        )

    def _mark(self, n: Notification, partition: int) -> None:
        """Keep a backfill's notification key on this partition, for its late original."""
        key = notification_key(
            n.tenant, n.account_id, n.policy_id, n.alert_type, n.text, bucket_of(n.ts)
        )
        self.dedup.remember(key, n.received_at // 1000, partition)

    def _late_original(self, n: Notification) -> bool:
        """Whether a webhook is the original of a backfill kept on its partition (consumed:
        a backfill absorbs one original). Its own bucket first, then the neighbours."""
        if n.kind != "alert":
            return False
        bucket = bucket_of(n.ts)
        now = n.received_at // 1000
        for near in (bucket, bucket - 1, bucket + 1):
            key = notification_key(n.tenant, n.account_id, n.policy_id, n.alert_type, n.text, near)
            if self.dedup.take(key, now):
                return True
        return False

    def _unique(
        self, n: Notification, key: bytes, source: Source, label: str, origin: str
    ) -> list[Output]:
        metrics = self.metrics
        self._child(metrics.notifications, label, event_label(n.event)).inc()
        if n.alert_type is not None and n.alert_type not in _KNOWN:
            metrics.unknown_types.inc()
        metrics.delivery_delay.observe(max(0.0, n.received_at / 1000 - n.ts))
        metrics.processing_lag.observe(max(0.0, self.clock() - n.received_at / 1000))
        event = EventRecord(
            event_id=n.event_id,
            kind=n.kind,
            tenant=n.tenant,
            account_id=n.account_id,
            policy_id=n.policy_id,
            policy_name=n.policy_name,
            alert_type=n.alert_type,
            event=n.event,
            correlation_id=n.correlation_id,
            ts=n.ts,
            received_at=n.received_at,
            name=n.name,
            text=n.text,
            data=n.data,
            catalog=record_for(n.alert_type),
            source=source,
            origin=origin,
        )
        outputs = [Output("events", key, jsonio.dumps(event))]
        for incident in self.correlator.on_event(n, source.partition):
            self._incident_outputs(outputs, key, incident, n.received_at // 1000, source.partition)
            if incident.version == 1 and incident.state == "open":
                outputs.append(self._flap_opening(n, incident.incident_id, source.partition))
        if n.kind == "alert":
            # Summed per (type, account, ts rounded to the rate step) until drain_rate_inputs:
            # one rate-input record per distinct triple per commit (or tick), not one per
            # event. Rounding changes no decision; summing moves an event ahead of other keys'
            # events of the same interval, so it may be counted where per-event order would
            # have found it late (never the reverse). Replays count per event.
            pending = self._rate_pending.get(source.partition)
            if pending is None:
                pending = self._rate_pending[source.partition] = {}
            slot = (n.alert_type, n.account_id, self.rates.quantise(n.ts))
            pending[slot] = pending.get(slot, 0) + 1
        return outputs

    def drain_rate_inputs(self, partition: int) -> list[Output]:
        """The pre-summed rate inputs of one raw partition since the last drain.

        The engine drains them into the partition's transaction at commit, so they are
        written exactly when the raw offsets that produced them are committed; a task that
        fails discards them with `forget_rate_inputs` (its transaction is aborted).
        """
        pending = self._rate_pending.pop(partition, None)
        if not pending:
            return []
        return [
            Output(
                "rate-input",
                (alert_type or "").encode(),
                jsonio.dumps({"t": alert_type, "a": account, "ts": ts, "n": n}),
            )
            for (alert_type, account, ts), n in pending.items()
        ]

    @staticmethod
    def _flap_opening(n: Notification, incident_id: str, partition: int) -> Output:
        """An incident opened: through the repartition topic to its alert type's partition,
        which holds every flap key of that type (the flap key includes it). Keyed like the rate
        sums, a task's transaction writes to the few partitions of the types it saw, where a
        flap key would spread every task's transaction over every partition."""
        fields = [n.tenant, n.account_id or "", n.policy_id or "", n.alert_type or ""]
        opening = {
            "o": fields,
            "ts": n.ts,
            "i": incident_id,
            "c": correlation_key(n.tenant, n.account_id, n.correlation_id or ""),
            "rp": partition,
        }
        return Output("rate-input", (n.alert_type or "").encode(), jsonio.dumps(opening))

    def forget_rate_inputs(self, partition: int) -> None:
        self._rate_pending.pop(partition, None)

    def _incident_outputs(
        self,
        outputs: list[Output],
        key: bytes,
        incident: IncidentRecord,
        now: float | None,
        partition: int,
    ) -> None:
        """An incident version goes to cfn.incidents (the history, keyed like its events) and
        to cfn.incident-state (the table, keyed by incident_id), in the same transaction; a
        closing version starts the retention after which the table forgets it. `now` None: a
        version that only adds the flap_id (nothing is counted again, no retention restarts)."""
        if now is not None and incident.close_reason is not None and not incident.late_end:
            label = type_label(incident.alert_type)
            self._child(self.metrics.incidents_closed, label, incident.close_reason).inc()
            if incident.state == "resolved" and incident.duration_s is not None:
                self._child(self.metrics.incident_duration, label).observe(
                    max(0, incident.duration_s)
                )
        value = jsonio.dumps(incident)
        outputs.append(Output("incidents", key, value))
        outputs.append(Output("incident-state", incident.incident_id.encode(), value))
        if now is not None:
            self.retention.on_version(incident, now, partition)

    def _publish_open(self) -> None:
        totals: dict[str, int] = {}
        for alert_type, count in self.correlator.open_by_type.items():
            label = type_label(alert_type)
            totals[label] = totals.get(label, 0) + count
        for label, count in totals.items():
            self.metrics.incidents_open.labels(label).set(count)

    # ---- timers -----------------------------------------------------------------------------

    def publish_gauges(self) -> None:
        """The gauges derived from state (open incidents, anomalies, flap episodes), refreshed
        once a tick round rather than per record: each walks its index."""
        self._publish_open()
        self._publish_anomalies()
        self._publish_flapping()

    def on_tick(self, now: float, partition: int) -> list[Output]:
        """A timer tick for one raw partition: expiry, orphan release, dedup TTL, tombstones in
        cfn.incident-state for closed incidents past their retention, then the rate
        inputs summed so far and a watermark tick for the rate partition of the same number.

        The sums go before the tick, as the events they count came before it: a tick behind
        them cannot find their rate partition idle.
        """
        self.dedup.expire(now, partition)
        outputs: list[Output] = []
        for deadline, incident in self.correlator.fire(now, partition):
            key = incident_record_key(incident.tenant, incident.account_id, incident.correlation_id)
            self._incident_outputs(outputs, key, incident, deadline, partition)
        for incident_id in self.retention.tick(now, partition):
            outputs.append(Output("incident-state", incident_id.encode(), None))
        outputs += self.drain_rate_inputs(partition)
        outputs.append(Output("rate-input", b"", jsonio.dumps({"tick": now}), partition=partition))
        return outputs

    # ---- rates ------------------------------------------------------------------------------

    def finish_rates(self, partition: int, now: int) -> list[Output]:
        """Close every window of one rate partition (end of a replay); returns their records."""
        outputs = self._rate_outputs(self.rates.close_all(partition, now))
        return outputs + self._judge_anomalies(partition) + self._judge_flaps(partition)

    def on_rate_input(self, value: bytes, partition: int) -> list[Output]:
        """One record of the rate repartition topic: a unique event to count, or a tick."""
        item = jsonio.loads(value)
        now = self.clock()
        if "o" in item:  # an incident opening, for the flap detector
            self.flaps.enqueue(
                item["o"], int(item["ts"]), item["i"], item["c"], int(item["rp"]), partition
            )
            return self._judge_flaps(partition)
        if "m" in item:  # a flap mark for an incident of this partition
            return self._flap_mark(item["m"], partition)
        if "tick" in item:
            records: Sequence[RateRecord] = self.rates.tick(float(item["tick"]), partition)
        else:
            result = self.rates.add(
                item["t"], item["a"], int(item["ts"]), partition, now, int(item.get("n", 1))
            )
            for window_s, dropped in result.dropped_late.items():
                self._child(self.metrics.dropped_late, f"{window_s}s").inc(dropped)
            records = result.records
        outputs = self._rate_outputs(records)
        if self.rates.finals or self.rates.watermark(partition) != self._anomaly_marks.get(
            partition
        ):
            outputs += self._judge_anomalies(partition)
            outputs += self._judge_flaps(partition)
        return outputs

    def _judge_flaps(self, partition: int) -> list[Output]:
        """Openings the watermark (minus the lateness) has passed, in event-time order."""
        result: FlapResult = self.flaps.advance(
            partition, self.rates.watermark(partition) - self.rates.lateness_s
        )
        outputs = [
            Output("flaps", (r.alert_type or "").encode(), jsonio.dumps(r)) for r in result.records
        ]
        if self.flap_marks:
            for mark in result.marks:
                value = {"m": {"c": mark.correlation_key, "i": mark.incident_id, "f": mark.flap_id}}
                outputs.append(
                    Output(
                        "rate-input",
                        mark.correlation_key.encode(),
                        jsonio.dumps(value),
                        partition=mark.partition,
                    )
                )
        return outputs

    def _flap_mark(self, mark: dict[str, Any], partition: int) -> list[Output]:
        incident = self.correlator.mark_flap(mark["c"], mark["i"], mark["f"])
        if incident is None:
            return []
        outputs: list[Output] = []
        key = incident_record_key(incident.tenant, incident.account_id, incident.correlation_id)
        # Retention of a closed incident counts from its closing, not from this mark.
        self._incident_outputs(outputs, key, incident, None, partition)
        return outputs

    def _publish_flapping(self) -> None:
        self._flap_labels = _publish_by_type(
            self.metrics.flapping, self.flaps.open_by_type.items(), self._flap_labels
        )

    def _judge_anomalies(self, partition: int) -> list[Output]:
        """Windows that became final go to the anomaly detector, in the order they did; then
        the watermark, which judges the empty windows of keys with an anomaly open."""
        detector = self.anomalies
        records: list[AnomalyRecord] = []
        finals, self.rates.finals = self.rates.finals, []
        for key, state, start, count in finals:
            records += detector.observe(key, state["type"], state["acc"], start, count, partition)
        mark = self.rates.watermark(partition)
        self._anomaly_marks[partition] = mark
        records += detector.advance(partition, mark, self.rates.lateness_s)
        outputs = []
        for record in records:
            if record.state == "open":
                self._child(self.metrics.anomalies, type_label(record.alert_type)).inc()
            outputs.append(
                Output("anomalies", (record.alert_type or "").encode(), jsonio.dumps(record))
            )
        return outputs

    def _publish_anomalies(self) -> None:
        self._anomaly_labels = _publish_by_type(
            self.metrics.anomalies_open, self.anomalies.open_by_type().items(), self._anomaly_labels
        )

    def _rate_outputs(self, records: Sequence[RateRecord]) -> list[Output]:
        outputs = []
        for record in records:
            if record.scope == "type":
                self._child(
                    self.metrics.rate_per_minute,
                    type_label(record.alert_type),
                    f"{record.window_s}s",
                ).set(record.rate_per_min)
            outputs.append(
                Output("rates", (record.alert_type or "").encode(), jsonio.dumps(record))
            )
        return outputs


def _publish_by_type(
    gauge: Any, counts: Iterable[tuple[str | None, int]], published: set[str]
) -> set[str]:
    """Set a by-type gauge from (alert_type, count) pairs (types summed by label); a label
    published before and absent now goes to 0. Returns the labels published."""
    totals: dict[str, int] = {}
    for alert_type, count in counts:
        label = type_label(alert_type or None)
        totals[label] = totals.get(label, 0) + count
    for label in published - totals.keys():
        gauge.labels(label).set(0)
    for label, count in totals.items():
        gauge.labels(label).set(count)
    return set(totals)
