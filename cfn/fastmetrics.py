"""Lock-free Prometheus collectors for code that runs on one event loop.

prometheus-client's metrics take a lock on every update (they may be shared between threads).
The ingest and the worker update theirs per request or per event and serve /metrics from the
same event loop, so they need no lock; the exposition is the same (a property test each).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class FastHistogram(Collector):
    """An unlabelled histogram for one event loop: `observe` is a bisect and two additions.

    prometheus-client's Histogram takes a lock and walks the buckets on every observation, and
    the ingest observes three per request, the worker two per event. Both observe and serve
    /metrics from one event loop, so no lock is needed; the exposition is the same.
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


class FastCounter(Collector):
    """A labelled counter for one event loop: `labels(...)` once, then `inc` is one addition.

    Args:
        name: the name without `_total` (prometheus-client adds it, as for its Counter).
        documentation: the HELP text.
        labelnames: the label names, in the order `labels` takes their values.
        registry: where to register.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        registry.register(self)

    def labels(self, *values: object) -> CounterChild:
        """The child for these label values, created at zero the first time."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(value) for value in values)  # as prometheus-client does
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family


class CounterChild:
    """One labelled series of a FastCounter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount
