"""The worker's start and stop: a start is tried again while Kafka comes and goes, undoing each
failed attempt, one log line per new reason; a stop ends the tries, a refusal is raised; and
/readyz says 503 from the stop signal on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from cfn.access import AccessDenied
from cfn.health import Reachability
from cfn.processors.engine import Engine
from cfn.processors.worker import metrics_app, start_engine


class FlakyEngine:
    """Fails its first starts with the given errors, then starts."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.starts = self.undone = 0

    async def start(self) -> None:
        self.starts += 1
        if self.failures:
            raise self.failures.pop(0)

    async def undo_start(self) -> None:
        self.undone += 1


def _start(engine: FlakyEngine, stop: asyncio.Event | None = None) -> bool:
    async def go() -> bool:
        return await start_engine(cast(Engine, engine), stop or asyncio.Event())

    return asyncio.run(go())


def test_a_start_is_tried_again_while_kafka_does_not_answer(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cfn.processors.worker.START_RETRY_MAX", 0.01)
    unreachable = KafkaError("Unable to get cluster metadata over all known brokers")
    engine = FlakyEngine(unreachable, unreachable, KafkaConnectionError(), TimeoutError())
    with caplog.at_level(logging.INFO, "cfn.worker"):
        assert _start(engine)
    assert (engine.starts, engine.undone) == (5, 4)
    heads = [r.getMessage().split(" (")[0] for r in caplog.records]
    assert heads == ["could not start"] * 3 + ["started after 4 failed attempts"]


def test_a_stop_ends_the_tries() -> None:
    async def go() -> tuple[bool, FlakyEngine]:
        engine = FlakyEngine(*[KafkaConnectionError() for _ in range(1000)])
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await start_engine(cast(Engine, engine), stop), engine

    started, engine = asyncio.run(go())
    assert not started and engine.starts == engine.undone >= 1


def test_a_refusal_is_not_tried_again() -> None:
    engine = FlakyEngine(TopicAuthorizationFailedError())
    with pytest.raises(AccessDenied):
        _start(engine)
    assert engine.starts == 1


def test_a_bug_is_not_tried_again() -> None:
    engine: Any = FlakyEngine(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        _start(engine)


def test_readyz_says_stopping_once_the_worker_is_told_to_stop() -> None:
    """A stopping worker no longer probes Kafka, and its last commit may wait on Kafka: its
    /readyz says 503 from the signal on, not the last probe's 200."""

    class ReadyEngine:
        ready, processed, tasks = True, 7, {0: None}

    async def go() -> list[tuple[int, str]]:
        registry, stop = CollectorRegistry(), asyncio.Event()
        reachability = Reachability(logging.getLogger("test"), registry)
        reachability.report(True)
        app = metrics_app(registry, cast(Engine, ReadyEngine()), reachability, stop)
        seen = []
        async with TestClient(TestServer(app)) as client:
            for _ in range(2):
                response = await client.get("/readyz")
                seen.append((response.status, (await response.json())["status"]))
                stop.set()
        return seen

    assert asyncio.run(go()) == [(200, "ready"), (503, "stopping")]
