"""KafkaSink's `submit` for fake sinks that define only an async `send`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cfn.ingest.sink import SendResult


class SubmitBySend:
    """Mixin: `submit` runs the fake's `send` as a task and hands its result to `done`."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> SendResult:
        raise NotImplementedError

    def submit(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        done: Callable[[SendResult], None],
    ) -> None:
        task = asyncio.ensure_future(self.send(topic, key, value, headers))
        _running.add(task)

        def settled(finished: asyncio.Future[Any]) -> None:
            _running.discard(task)
            done(finished.result())

        task.add_done_callback(settled)


_running: set[asyncio.Future[Any]] = set()
