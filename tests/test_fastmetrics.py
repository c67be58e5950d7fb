"""cfn.fastmetrics' collectors expose exactly what prometheus-client's metrics would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from cfn.fastmetrics import FastCounter, FastHistogram
from cfn.ingest.metrics import BODY_BUCKETS, LATENCY_BUCKETS

VALUES = st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), max_size=50)


@given(VALUES, st.sampled_from([LATENCY_BUCKETS, BODY_BUCKETS]))
def test_same_exposition_as_prometheus_client(values: list[float], buckets: tuple[float]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_total_seconds", "doc", buckets=buckets, registry=theirs)
    fast = FastHistogram("h_total_seconds", "doc", buckets, ours)
    for value in values:
        reference.observe(value)
        fast.observe(value)
    assert generate_latest(ours) == generate_latest(theirs)


INCREMENTS = st.lists(
    st.tuples(
        st.sampled_from(["202", "401", "503", 'a"b\\c\nd']),
        st.sampled_from(["x", "y"]),
        st.floats(min_value=0, max_value=1e9, allow_nan=False),
    ),
    max_size=40,
)


@given(INCREMENTS)
def test_counter_same_exposition_as_prometheus_client(
    increments: list[tuple[str, str, float]],
) -> None:
    disable_created_metrics()  # type: ignore[no-untyped-call]  # as ingest.metrics does
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("c_requests", "doc \\ with\nescapes", ["code", "kind"], registry=theirs)
    fast = FastCounter("c_requests", "doc \\ with\nescapes", ["code", "kind"], ours)
    for code, kind, amount in increments:
        reference.labels(code, kind).inc(amount)
        fast.labels(code, kind).inc(amount)
    assert generate_latest(ours) == generate_latest(theirs)


def test_counter_refuses_wrong_labels_and_decrements() -> None:
    fast = FastCounter("c_refusals", "doc", ["code"], CollectorRegistry())
    with pytest.raises(ValueError, match="expected labels"):
        fast.labels("202", "extra")
    with pytest.raises(ValueError, match="only go up"):
        fast.labels("202").inc(-1)
    assert fast.labels("202").value == 0.0
    fast.labels(202).inc()  # label values become strings, as prometheus-client makes them
    assert fast.labels("202").value == 1.0
