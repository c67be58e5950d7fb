"""cfn.health: one log line per change of Kafka's reachability, and quiet client logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from cfn.health import Reachability, quiet_client_logs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("cfn_kafka_up")


def test_one_line_per_change_with_the_outage_length(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    reach = Reachability(logging.getLogger("cfn.test"), registry, clock)
    caplog.set_level(logging.INFO, logger="cfn.test")
    assert gauge(registry) == 0.0  # not probed yet: not known to be up
    changes = [reach.report(True)]
    for _ in range(50):  # a long outage: many failed probes
        clock.now += 1
        changes.append(reach.report(False, "KafkaConnectionError"))
        assert gauge(registry) == 0.0
    assert reach.outage == pytest.approx(49.0)
    clock.now += 1
    changes.append(reach.report(True))
    changes.append(reach.report(True))
    assert changes.count(True) == 3
    assert gauge(registry) == 1.0
    assert reach.outage == 0.0
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka reachable",
        "Kafka unreachable (KafkaConnectionError)",
        "Kafka reachable again after 50.0s unreachable",
    ]


@pytest.fixture
def no_client_filters() -> Iterator[None]:
    """Takes the filters quiet_client_logs installs off again (they are process-wide)."""
    yield
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("aiokafka"):
            logging.getLogger(name).filters.clear()


@pytest.mark.usefixtures("no_client_filters")
def test_client_errors_are_held_back_after_the_first(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    quiet_client_logs(period=60.0, clock=clock)
    logger = logging.getLogger("aiokafka.conn")
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    for _ in range(500):  # a broker down: connection errors several times a second
        logger.error("Unable connect to %r: %s", "127.0.0.1:9092", "refused")
        clock.now += 0.05
    logger.debug("a debug line is never held back")
    clock.now += 60
    logger.error("Unable connect to %r: %s", "127.0.0.1:9092", "refused")
    lines = [r.getMessage() for r in caplog.records if r.name == "aiokafka.conn"]
    assert lines[0] == "Unable connect to '127.0.0.1:9092': refused"
    assert lines[-2] == "a debug line is never held back"
    assert "similar held back in the last 60s" in lines[-1]
    # 25 s of errors, then one a minute after the first: it also counts the 499 held back.
    assert "(499 similar" in lines[-1]
    assert len(lines) == 3
