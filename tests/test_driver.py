"""The in-memory driver (processors/driver.py): repartitioned records read where the topic puts
them, windows closed at a watermark, timers fired on the raw partitions seen."""

from __future__ import annotations

from cfn.partition import partition_for
from cfn.processors.driver import Driver, Raw
from cfn.processors.pipeline import Output
from cfn.processors.settings import WorkerSettings
from cfn.schemas import jsonio
from tests.payloads import alert, encode

NOW = 1_790_000_000
TYPE = "health_check_status_notification"


def driver(**settings: object) -> Driver:
    return Driver.over_dicts(WorkerSettings(**settings), lambda: float(NOW))  # type: ignore[arg-type]


def raw(partition: int, offset: int, at: int, **body: object) -> Raw:
    return Raw(encode(alert(ts=at, **body)), b"k", partition, offset, at * 1000)  # type: ignore[arg-type]


def records(outputs: list[Output], role: str) -> list[dict[str, object]]:
    return [jsonio.loads(o.value) for o in outputs if o.role == role and o.value is not None]


def test_rate_inputs_are_read_on_their_keys_partition_and_close_at_the_watermark() -> None:
    d = driver(partitions=4, rate_windows=(60,), rate_lateness=60)
    minute = NOW - NOW % 60
    outputs: list[Output] = []
    for i, partition in enumerate((0, 1, 3)):  # three raw partitions, one alert type
        outputs += d.feed(raw(partition, i, minute + i, correlation=None))
    assert [o.role for o in outputs] == ["events"] * 3  # nothing of cfn.rate-input
    assert len(d.rate_inputs) == 3 and d.rate_partitions == set()
    assert d.read_rate_inputs() == []  # the window is still open
    assert d.rate_partitions == {partition_for(TYPE.encode(), 4)} and d.rate_inputs == []
    assert records(d.close_rates(minute + 59), "rates") == []  # not passed yet
    closed = records(d.close_rates(minute + 60), "rates")
    assert {(r["scope"], r["count"]) for r in closed} == {("type", 3), ("account_type", 3)}


def test_timers_fire_on_every_raw_partition_seen_and_no_other() -> None:
    d = driver(partitions=4, stale_after=3600.0)
    d.feed(raw(2, 0, NOW, correlation="c1"))
    d.feed(raw(0, 0, NOW, correlation="c2"))
    assert d.raw_partitions == {0, 2}
    assert records(d.tick(NOW + 3599), "incidents") == []
    expired = records(d.tick(NOW + 3600), "incidents")
    assert sorted((r["correlation_id"], r["state"]) for r in expired) == [
        ("c1", "expired"),
        ("c2", "expired"),
    ]


def test_run_feeds_then_settles_in_that_order() -> None:
    settings = {"partitions": 2, "stale_after": 3600.0, "rate_windows": (60,)}
    given = [raw(i % 2, i, NOW + i, correlation=f"c{i}", account=f"a{i}") for i in range(6)]
    by_steps = driver(**settings)
    expected: list[Output] = []
    for record in given:
        expected += by_steps.feed(record)
    expected += by_steps.settle(NOW + 7200, NOW + 7200)
    outputs = driver(**settings).run(given, NOW + 7200, NOW + 7200)
    assert outputs == expected
    assert [o.role for o in outputs[:18]] == ["events", "incidents", "incident-state"] * 6
    assert {r["state"] for r in records(outputs[18:], "incidents")} == {"expired"}
    assert records(outputs, "rates")
