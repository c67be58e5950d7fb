"""schemas.histogram.FastHistogram exposes exactly what prometheus-client's Histogram would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ingest.metrics import BODY_BUCKETS, LATENCY_BUCKETS
from schemas.histogram import FastHistogram

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
