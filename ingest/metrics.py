"""Prometheus metrics of the ingest, built on an injected registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cfn.fastmetrics import FastCounter, FastHistogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BODY_BUCKETS = (256, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1048576)


# The *_created series double the exposition for no use in our dashboards or rules.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream


@dataclass(frozen=True, slots=True)
class IngestMetrics:
    requests: FastCounter
    request_duration: FastHistogram
    ack_duration: FastHistogram
    body_bytes: FastHistogram
    auth_failures: FastCounter
    in_flight: Gauge
    kafka_errors: FastCounter
    dead_letters: FastCounter
    tenant_requests: FastCounter
    tenant_throttled: FastCounter
    tenant_slots: TenantSlotGauges
    internal_errors: FastCounter
    connections_refused: FastCounter
    connections: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        metrics = cls._create(registry)
        # Every series a rule or panel divides by exists from the start, at zero, so a healthy
        # ingest shows "0% 5xx" rather than "no data".
        for code in (
            "202",
            "400",
            "401",
            "404",
            "405",
            "408",
            "413",
            "429",
            "431",
            "500",
            "501",
            "503",
        ):
            metrics.requests.labels(code)
        for reason in ("missing", "mismatch"):
            metrics.auth_failures.labels(reason)
        for kind, cause in (
            ("timeout", "AckTimeout"),
            ("retriable", "KafkaConnectionError"),
            ("recovering", "ProducerReplacing"),
            ("permanent", "TopicAuthorizationFailedError"),
        ):
            metrics.kafka_errors.labels(kind, cause)
        for reason in ("invalid_json", "not_an_object"):
            metrics.dead_letters.labels(reason)
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> IngestMetrics:
        return cls(
            # Every answered request, by HTTP status code.
            requests=FastCounter(
                "cfn_ingest_requests",
                "Requests answered, by status code.",
                ["code"],
                registry=registry,
            ),
            # Time from the first byte of the request to the answer, whatever the answer.
            request_duration=FastHistogram(
                "cfn_ingest_request_duration_seconds",
                "Request handling time.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            # Time the acks=all write to Kafka took (successful or not).
            ack_duration=FastHistogram(
                "cfn_ingest_kafka_ack_duration_seconds",
                "Kafka acks=all write time.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            # Size of authenticated request bodies.
            body_bytes=FastHistogram(
                "cfn_ingest_body_bytes",
                "Authenticated request body size.",
                buckets=BODY_BUCKETS,
                registry=registry,
            ),
            # 401s by reason: the header was missing, or matched no tenant's secret.
            auth_failures=FastCounter(
                "cfn_ingest_auth_failures",
                "Rejected authentications, by reason.",
                ["reason"],
                registry=registry,
            ),
            # Requests being handled right now (429 above CFN_INGEST_MAX_INFLIGHT).
            in_flight=Gauge(
                "cfn_ingest_requests_in_flight",
                "Requests in flight.",
                registry=registry,
            ),
            # Failed Kafka writes, by kind and cause (the Kafka error class name, or
            # ProducerReplacing): timeout, retriable and recovering give 503, permanent 500,
            # too_large 413.
            kafka_errors=FastCounter(
                "cfn_ingest_kafka_errors",
                "Failed Kafka writes, by kind and cause.",
                ["kind", "cause"],
                registry=registry,
            ),
            # Authenticated bodies written to the dead-letter topic at ingest, by reason.
            dead_letters=FastCounter(
                "cfn_ingest_dead_letters",
                "Bodies dead-lettered at ingest.",
                ["reason"],
                registry=registry,
            ),
            # Authenticated requests answered, by tenant (from the configuration, so a bounded
            # set) and status code; 429 includes every throttling reason.
            tenant_requests=FastCounter(
                "cfn_ingest_tenant_requests",
                "Authenticated requests answered, by tenant and status code.",
                ["tenant", "code"],
                registry=registry,
            ),
            # 429s for a tenant over its own limits, by reason: limit (its max_inflight), share
            # (over its guarantee with no shared slot free), rate (its token bucket), global.
            tenant_throttled=FastCounter(
                "cfn_ingest_tenant_throttled",
                "Requests refused 429 for a tenant's limits, by tenant and reason.",
                ["tenant", "reason"],
                registry=registry,
            ),
            tenant_slots=TenantSlotGauges(registry),
            # Unexpected exceptions while serving a request (answered 500), by exception kind.
            internal_errors=FastCounter(
                "cfn_ingest_internal_errors",
                "Requests answered 500 for an internal error, by exception kind.",
                ["kind"],
                registry=registry,
            ),
            # Open connections on the public port (CFN_INGEST_MAX_CONNECTIONS caps them).
            connections=Gauge(
                "cfn_ingest_connections",
                "Open connections on the public port.",
                registry=registry,
            ),
            # Connections answered 503 and closed at once: over CFN_INGEST_MAX_CONNECTIONS.
            connections_refused=FastCounter(
                "cfn_ingest_connections_refused",
                "Connections refused over CFN_INGEST_MAX_CONNECTIONS.",
                [],
                registry=registry,
            ),
        )


# (tenant, requests in flight, its max_inflight, its guaranteed slots)
SlotRow = tuple[str, int, int, int]


class TenantSlotGauges(Collector):
    """Per-tenant in-flight gauges, read from the admission state at scrape time.

    Nothing is updated per request, and a tenant removed by a reload disappears from the
    exposition with it. `read` is set by the app once its admission exists.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.read: Callable[[], Iterable[SlotRow]] = tuple
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        # Requests of the tenant being handled now (429 beyond its share or max_inflight).
        in_flight = GaugeMetricFamily(
            "cfn_ingest_tenant_in_flight", "Requests in flight, by tenant.", labels=["tenant"]
        )
        # The tenant's cap on requests in flight (its max_inflight, at most the global one).
        limit = GaugeMetricFamily(
            "cfn_ingest_tenant_max_inflight",
            "The tenant's max_inflight.",
            labels=["tenant"],
        )
        # The slots kept for the tenant that no other tenant can take.
        guaranteed = GaugeMetricFamily(
            "cfn_ingest_tenant_guaranteed_inflight",
            "Slots guaranteed to the tenant.",
            labels=["tenant"],
        )
        for tenant, now, most, kept in self.read():
            in_flight.add_metric([tenant], now)
            limit.add_metric([tenant], most)
            guaranteed.add_metric([tenant], kept)
        yield from (in_flight, limit, guaranteed)
