"""The metrics of `cfn reconcile` (and its delivery-health poller), on an injected registry.

Only the reconcile process registers them: the ingest and the worker never talk to Cloudflare.
Labels: `tenant` only (few, configured); never an account id, a policy or an alert type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class ReconcileMetrics:
    last_success: Gauge
    last_failure: Gauge
    missed: Counter
    backfilled: Counter
    silenced: Counter
    runs: Counter
    last_run: Gauge
    # (kind, tenant, history id) already counted: a record is counted once per process.
    counted: set[tuple[str, str, str]] = field(default_factory=set)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ReconcileMetrics:
        return cls(
            # The destination's last_success as Cloudflare reports it (epoch seconds).
            last_success=Gauge(
                "cfn_cloudflare_destination_last_success_timestamp_seconds",
                "When Cloudflare last delivered to the tenant's cfn destination",
                ["tenant"],
                registry=registry,
            ),
            # The destination's last_failure as Cloudflare reports it (epoch seconds).
            last_failure=Gauge(
                "cfn_cloudflare_destination_last_failure_timestamp_seconds",
                "When a delivery to the tenant's cfn destination last failed",
                ["tenant"],
                registry=registry,
            ),
            # History records sent to cfn's destination that never reached cfn.raw (once each
            # per process).
            missed=Counter(
                "cfn_reconcile_missed",
                "Notifications Cloudflare sent to cfn that cfn never accepted",
                ["tenant"],
                registry=registry,
            ),
            # Missed records written into cfn.raw from the history (--backfill).
            backfilled=Counter(
                "cfn_reconcile_backfilled",
                "Missed notifications written into cfn.raw from the history",
                ["tenant"],
                registry=registry,
            ),
            # History records of a silenced policy: a gap that is no outage (once each).
            silenced=Counter(
                "cfn_reconcile_silenced",
                "History records of a policy silenced when they were sent",
                ["tenant"],
                registry=registry,
            ),
            # Reconcile passes over one tenant, by outcome (ok, or the error's kind).
            runs=Counter(
                "cfn_reconcile_runs",
                "Reconcile passes over a tenant, by outcome",
                ["tenant", "outcome"],
                registry=registry,
            ),
            # When the last pass over the tenant finished well (epoch seconds).
            last_run=Gauge(
                "cfn_reconcile_last_success_timestamp_seconds",
                "When a reconcile pass over the tenant last succeeded",
                ["tenant"],
                registry=registry,
            ),
        )
