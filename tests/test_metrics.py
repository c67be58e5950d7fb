"""processors/metrics.py: what the worker's registry exposes beyond the pipeline's own counters
(those are tested with the logic that moves them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from cfn.processors.metrics import WorkerMetrics
from cfn.version import version


def test_the_worker_exposes_its_build_info() -> None:
    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    assert registry.get_sample_value("cfn_build_info", {"version": version()}) == 1.0
    assert f'cfn_build_info{{version="{version()}"}} 1.0' in generate_latest(registry).decode()
