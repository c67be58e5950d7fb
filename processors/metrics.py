"""Prometheus metrics of the worker, on an injected registry, with bounded labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from cfn.fastmetrics import FastHistogram
from cfn.schemas.catalog import known_ids
from cfn.version import register_build_info

DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
_KNOWN = known_ids()


def type_label(alert_type: str | None) -> str:
    """alert_type as a label: known ids as-is, "none" when absent, "unknown" otherwise.

    Unknown ids are unbounded by nature; they stay whole in the topics and are counted by
    cfn_unknown_alert_types_total, but never become label values.
    """
    if alert_type is None:
        return "none"
    return alert_type if alert_type in _KNOWN else "unknown"


def event_label(event: str | None) -> str:
    if event is None:
        return "none"
    return event if event in ("start", "end") else "other"


# The *_created series double the exposition for no use in our dashboards or rules.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    notifications: Counter
    duplicates: Counter
    dlq: Counter
    dlq_ratio: Gauge
    dlq_alarm: Gauge
    incidents_open: Gauge
    incidents_closed: Counter
    incident_duration: Histogram
    rate_per_minute: Gauge
    anomalies_open: Gauge
    flapping: Gauge
    anomalies: Counter
    delivery_delay: FastHistogram  # observed per event: lock-free
    processing_lag: FastHistogram
    consumer_lag: Gauge
    unknown_types: Counter
    dropped_late: Counter
    partitions: Gauge
    commit_duration: Histogram
    task_failures: Counter
    restore_duration: Histogram
    build_info: Gauge
    raw_skipped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        return cls(
            # Unique notifications (after dedup), fit for rate(); per-account detail is in topics.
            notifications=Counter(
                "cfn_notifications",
                "Unique notifications by type and event.",
                ["alert_type", "event"],
                registry=registry,
            ),
            # Redeliveries dropped by dedup.
            duplicates=Counter(
                "cfn_duplicates",
                "Redelivered notifications dropped.",
                ["alert_type"],
                registry=registry,
            ),
            # Raw records dead-lettered by the worker, by reason code.
            dlq=Counter(
                "cfn_dlq", "Dead-lettered records by reason.", ["reason"], registry=registry
            ),
            # Share of dead letters among the last CFN_DLQ_ALARM_SAMPLE input records.
            dlq_ratio=Gauge("cfn_dlq_ratio", "Recent dead-letter share (0..1).", registry=registry),
            # 1 while that share exceeds CFN_DLQ_ALARM_RATIO.
            dlq_alarm=Gauge(
                "cfn_dlq_alarm", "1 when the dead-letter share is too high.", registry=registry
            ),
            # Incidents open now on this worker's partitions (rebuilt from state on restart).
            incidents_open=Gauge(
                "cfn_incidents_open",
                "Open incidents by type.",
                ["alert_type"],
                registry=registry,
            ),
            # Incidents closed, by how: end, stale_timeout, orphan_end.
            incidents_closed=Counter(
                "cfn_incidents_closed",
                "Closed incidents by type and reason.",
                ["alert_type", "close_reason"],
                registry=registry,
            ),
            # START-to-END duration of resolved incidents.
            incident_duration=Histogram(
                "cfn_incident_duration_seconds",
                "Resolved incident duration.",
                ["alert_type"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            # Unique events per minute in the last closed window of each size.
            rate_per_minute=Gauge(
                "cfn_alert_rate_per_minute",
                "Events per minute in the last closed window.",
                ["alert_type", "window"],
                registry=registry,
            ),
            # Rate anomalies open on this worker's rate partitions, by type (rebuilt from state).
            anomalies_open=Gauge(
                "cfn_anomalies_open",
                "Open rate anomalies (per account and type), by type.",
                ["alert_type"],
                registry=registry,
            ),
            # Flap episodes open on this worker's partitions, by type (rebuilt from state).
            flapping=Gauge(
                "cfn_flapping",
                "Open flap episodes (per tenant, account, policy and type), by type.",
                ["alert_type"],
                registry=registry,
            ),
            # Rate anomalies opened, by type.
            anomalies=Counter(
                "cfn_anomalies",
                "Rate anomalies opened, by type.",
                ["alert_type"],
                registry=registry,
            ),
            # Cloudflare's ts to ingest's received_at.
            delivery_delay=FastHistogram(
                "cfn_delivery_delay_seconds", "received_at - ts.", DELAY_BUCKETS, registry
            ),
            # Ingest's received_at to the worker processing it.
            processing_lag=FastHistogram(
                "cfn_processing_lag_seconds",
                "now - received_at at processing.",
                DELAY_BUCKETS,
                registry,
            ),
            # Records in the input topic not yet processed by this worker.
            consumer_lag=Gauge(
                "cfn_consumer_lag_records",
                "Unprocessed input records.",
                ["topic"],
                registry=registry,
            ),
            # Notifications whose alert_type is not in the catalogue (they still flow).
            unknown_types=Counter(
                "cfn_unknown_alert_types",
                "Notifications of unknown alert types.",
                registry=registry,
            ),
            # Events too late for their rate window (past CFN_RATE_LATENESS).
            dropped_late=Counter(
                "cfn_rates_dropped_late",
                "Events dropped as too late for a window.",
                ["window"],
                registry=registry,
            ),
            # Partition tasks this worker owns (sum over workers = CFN_PARTITIONS when settled).
            partitions=Gauge(
                "cfn_worker_partitions",
                "Partition tasks owned by this worker.",
                registry=registry,
            ),
            # One commit round: every open task's flush + offsets + commit, in parallel.
            commit_duration=Histogram(
                "cfn_worker_commit_duration_seconds",
                "Time to commit every open transaction of one round.",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=registry,
            ),
            # Task transactions that failed (fenced, timed out, broker gone): state is dropped,
            # the group rebalances and the task is restored from its changelogs.
            task_failures=Counter(
                "cfn_worker_task_failures",
                "Failed task transactions, by error.",
                ["error"],
                registry=registry,
            ),
            # Fence + changelog restore + seek of the partitions newly assigned to this worker.
            restore_duration=Histogram(
                "cfn_worker_restore_duration_seconds",
                "Time to take over newly assigned partitions.",
                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                registry=registry,
            ),
            # cfn_build_info{version}: 1, the version this worker runs.
            build_info=register_build_info(registry),
            # cfn.raw records deleted (retention) before this worker read them: lost for good.
            raw_skipped=Counter(
                "cfn_raw_records_skipped",
                "cfn.raw records deleted before they were processed, by partition.",
                ["partition"],
                registry=registry,
            ),
        )
