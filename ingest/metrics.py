"""Prometheus metrics of the ingest, built on an injected registry."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BODY_BUCKETS = (256, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1048576)


# The *_created series double the exposition for no use in our dashboards or rules.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream


class FastHistogram(Collector):
    """An unlabelled histogram for one event loop: `observe` is a bisect and two additions.

    prometheus-client's Histogram takes a lock and walks the buckets on every observation; three
    of them per request were a measurable share of the ingest's CPU. The ingest observes from
    its event loop only, so no lock is needed; the exposition is the same.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip([*self._bounds, float("inf")], self._counts, strict=True):
            total += count
            cumulative.append((_le(bound), total))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self._sum
        )


def _le(bound: float) -> str:
    # How prometheus-client writes `le` ("1.048576e+06", "+Inf"); untyped upstream.
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


@dataclass(frozen=True, slots=True)
class IngestMetrics:
    requests: Counter
    request_duration: FastHistogram
    ack_duration: FastHistogram
    body_bytes: FastHistogram
    auth_failures: Counter
    in_flight: Gauge
    kafka_errors: Counter
    dead_letters: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        metrics = cls._create(registry)
        # Every series a rule or panel divides by exists from the start, at zero, so a healthy
        # ingest shows "0% 5xx" rather than "no data".
        for code in ("202", "400", "401", "404", "405", "408", "413", "429", "500", "503"):
            metrics.requests.labels(code)
        for reason in ("missing", "mismatch"):
            metrics.auth_failures.labels(reason)
        for kind in ("timeout", "retriable", "permanent"):
            metrics.kafka_errors.labels(kind)
        for reason in ("invalid_json", "not_an_object"):
            metrics.dead_letters.labels(reason)
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> IngestMetrics:
        return cls(
            # Every answered request, by HTTP status code.
            requests=Counter(
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
            auth_failures=Counter(
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
            # Failed Kafka writes: timeout and retriable give 503, permanent gives 500.
            kafka_errors=Counter(
                "cfn_ingest_kafka_errors",
                "Failed Kafka writes, by kind.",
                ["kind"],
                registry=registry,
            ),
            # Authenticated bodies written to the dead-letter topic at ingest, by reason.
            dead_letters=Counter(
                "cfn_ingest_dead_letters",
                "Bodies dead-lettered at ingest.",
                ["reason"],
                registry=registry,
            ),
        )
