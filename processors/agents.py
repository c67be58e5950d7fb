"""The agents and timers: loop, hand each record to the pipeline, send what it returns."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from processors.app import CfnApp
from processors.pipeline import Output, Pipeline, header_map
from schemas import jsonio

log = logging.getLogger("cfn.worker")


class Runtime:
    """Glue between the Faust app and the pure pipeline; holds no logic of its own."""

    def __init__(self, cfn: CfnApp, pipeline: Pipeline) -> None:
        self.cfn = cfn
        self.pipeline = pipeline
        self.dirty = True
        self.ready = False
        self.processed = 0

    def assigned(self, topic: str) -> set[int]:
        return {
            tp.partition for tp in self.cfn.app.assignor.assigned_actives() if tp.topic == topic
        }

    def maybe_rebuild(self) -> None:
        """After a rebalance, re-derive timers and indexes from the (recovered) tables."""
        if not self.dirty:
            return
        self.dirty = False
        mine = self.assigned(self.cfn.settings.topic("raw"))
        started = time.monotonic()
        dedup = [(k, v) for k, v in self.cfn.dedup.items() if v[1] in mine]
        incidents = [(k, v) for k, v in self.cfn.incidents.items() if v["p"] in mine]
        rates = [(k, v) for k, v in self.cfn.rates.items() if v["p"] in mine]
        self.pipeline.rebuild(dedup, incidents, rates)
        self.ready = True
        log.info(
            "state rebuilt for partitions %s: %d dedup ids, %d incidents, %d rate keys in %.2fs",
            sorted(mine),
            len(dedup),
            len(incidents),
            len(rates),
            time.monotonic() - started,
        )

    async def emit(self, outputs: Iterable[Output]) -> None:
        topics = self.cfn.outputs
        for out in outputs:
            await topics[out.role].send(key=out.key, value=out.value, partition=out.partition)


def register(cfn: CfnApp, pipeline: Pipeline) -> Runtime:
    """Attach the agents and the tick timer to the app; returns their shared runtime."""
    app = cfn.app
    runtime = Runtime(cfn, pipeline)
    ticks_topic = cfn.settings.topic("ticks")
    raw_topic = cfn.settings.topic("raw")

    def on_rebalance(*_args: Any, **_kwargs: Any) -> None:
        runtime.dirty = True

    app.on_rebalance_complete.connect(on_rebalance)

    @app.agent(cfn.raw, name="cfn-process")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            runtime.maybe_rebuild()
            message = event.message
            if message.topic == ticks_topic:
                now = float(jsonio.loads(event.value)["now"])
                await runtime.emit(pipeline.on_tick(now, message.partition))
                continue
            outputs = pipeline.on_raw(
                event.value or b"",
                message.key,
                header_map(message.headers),
                message.partition,
                message.offset,
                int(message.timestamp * 1000),
            )
            await runtime.emit(outputs)
            runtime.processed += 1

    @app.agent(cfn.rate_input, name="cfn-rates")
    async def rates(stream: Any) -> None:
        async for event in stream.events():
            runtime.maybe_rebuild()
            await runtime.emit(pipeline.on_rate_input(event.value, event.message.partition))

    @app.timer(interval=cfn.settings.tick_interval)
    async def tick() -> None:
        """Drive the explicit timers: one tick record per owned raw partition.

        Ticks travel through Kafka so that timer-driven table writes happen inside stream
        iteration, in the same transaction as everything else of that partition.
        """
        now = time.time()
        value = jsonio.dumps({"now": now})
        ticks = cfn.outputs["ticks"]
        consumer = app.consumer
        lag = 0
        for tp in app.assignor.assigned_actives():
            if tp.topic != raw_topic:
                continue
            await ticks.send(key=b"tick", value=value, partition=tp.partition)
            high = consumer.highwater(tp) if consumer is not None else None
            if high is not None:
                done = pipeline.last_offset.get(tp.partition, -1) + 1
                lag += max(0, high - done)
        pipeline.metrics.consumer_lag.labels(raw_topic).set(lag)

    return runtime
