"""The agents and timers: loop, hand each record to the pipeline, send what it returns."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from processors.app import CfnApp
from processors.eos import processing_guard
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
        self.next_offset: dict[Any, int] = {}
        self.rewinding: dict[Any, int] = {}
        self.resume_at: dict[int, int] = {}

    def assigned(self, topic: str) -> set[int]:
        return {
            tp.partition for tp in self.cfn.app.assignor.assigned_actives() if tp.topic == topic
        }

    async def maybe_rebuild(self) -> None:
        """After a rebalance, re-derive timers and indexes from the (recovered) tables, and
        learn from the broker where each owned raw partition really resumes."""
        if not self.dirty:
            return
        self.dirty = False
        self.next_offset.clear()
        self.rewinding.clear()
        self.resume_at = await self._committed_raw_offsets()
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

    async def _committed_raw_offsets(self) -> dict[int, int]:
        """The group's committed offsets of the raw topic, asked of the broker directly:
        Faust's own copy is sometimes empty right after recovery."""
        from aiokafka.admin import AIOKafkaAdminClient

        settings = self.cfn.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        try:
            await admin.start()
            offsets = await admin.list_consumer_group_offsets(settings.app_id)
        except Exception as exc:  # without them we fall back to accepting the first record
            log.warning("could not read committed offsets: %s", type(exc).__name__)
            return {}
        finally:
            await admin.close()
        raw = settings.topic("raw")
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == raw}

    async def in_order(self, message: Any) -> bool:
        """False for a raw record that must not be processed now; rewinds over skipped ones.

        After recovery, faust-streaming 0.15 sometimes hands the agent a record from beyond
        records it never delivered (a prefetched batch dropped at the post-recovery seek), and
        records the hole as a "gap" that its commit then treats as done: those notifications
        would be lost. `cfn.raw` is written without transactions, so its offsets have no
        holes: any jump is that bug. We seek back to the first missing offset, forget Faust's
        gap, and skip the early record; it is fetched again, in order.
        """
        tp = message.tp
        consumer = self.cfn.app.consumer
        expected = self.next_offset.get(tp)
        if expected is None:
            expected = self.resume_at.get(tp.partition)  # where this assignment starts
        offset = message.offset
        if expected is not None and offset > expected:
            # Seek again for every early record: a prefetched batch arriving after our seek
            # moves Faust's read offset forward and would drop the re-fetched records.
            consumer._gap.pop(tp, None)
            if self.rewinding.get(tp) != expected:
                log.warning("raw %s: got offset %d before %d; rewinding", tp, offset, expected)
                self.rewinding[tp] = expected
            # Through the consumer thread: Faust's plain seek() touches aiokafka's fetcher from
            # this thread and races with it (KeyError in fetched_records).
            await consumer._thread.seek_wait({tp: expected})
            return False
        if expected is not None and offset < expected:
            return False  # already handled in this assignment (re-delivered after a rewind)
        self.next_offset[tp] = offset + 1
        self.rewinding.pop(tp, None)
        return True

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

    guard = processing_guard()

    @app.agent(cfn.raw, name="cfn-process")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            async with guard:  # state, outputs and the ack commit together (see eos.py)
                await runtime.maybe_rebuild()
                message = event.message
                if message.topic == ticks_topic:
                    now = float(jsonio.loads(event.value)["now"])
                    await runtime.emit(pipeline.on_tick(now, message.partition))
                elif await runtime.in_order(message):
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

                event.ack()

    @app.agent(cfn.rate_input, name="cfn-rates")
    async def rates(stream: Any) -> None:
        async for event in stream.events():
            async with guard:
                await runtime.maybe_rebuild()
                await runtime.emit(pipeline.on_rate_input(event.value, event.message.partition))
                event.ack()

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
