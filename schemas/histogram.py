"""A lock-free unlabelled Prometheus histogram for code that runs on one event loop."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class FastHistogram(Collector):
    """An unlabelled histogram for one event loop: `observe` is a bisect and two additions.

    prometheus-client's Histogram takes a lock and walks the buckets on every observation; three
    of them per request were a measurable share of the ingest's CPU, two per event of the
    worker's. Both observe and serve /metrics from one event loop, so no lock is needed; the
    exposition is the same.
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
