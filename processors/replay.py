"""`cfn replay`: reprocess a range of `cfn.raw` through the same pipeline, deterministically.

By default it writes to a shadow prefix, `replay.` + CFN_TOPIC_PREFIX (`replay.cfn.events`, ...):
the live prefix stays visible in the name, every shadow topic sorts apart from the live ones, and
nothing that subscribes to or is granted `cfn.*` (a prefixed ACL, a pattern subscription) sees
them, which a suffix (`cfn.replay.events`) would not give. `--output-prefix` picks another
prefix; `--live` writes into the live topics, after printing its plan and, on a terminal, asking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.config import OUTPUT_ROLES, topic_names
from cfn.kafka import aiokafka_options
from cfn.processors.driver import Driver
from cfn.processors.pipeline import Output, header_map
from cfn.processors.progress import Progress
from cfn.processors.settings import WorkerSettings
from cfn.topics import ensure_topics

FAR_FUTURE = 4_102_444_800.0  # closes every window and fires every timer at the end
SHADOW = "replay."  # the default output prefix is SHADOW + CFN_TOPIC_PREFIX (see above)
Ranges = dict[TopicPartition, tuple[int, int]]


class ReplayError(ValueError):
    """The arguments of `cfn replay` do not make sense together; the message says why."""


def choose_prefix(live_prefix: str, output_prefix: str | None, live: bool) -> str:
    """The prefix replay writes under: the shadow one unless told otherwise.

    Raises:
        ReplayError: `--live` together with `--output-prefix`, or an output prefix that is the
            live one (that is what `--live` is for, and it asks first).
    """
    if live and output_prefix is not None:
        raise ReplayError(
            "--live writes into the live topics (CFN_TOPIC_PREFIX) and --output-prefix "
            "writes elsewhere; give one of them"
        )
    if live:
        return live_prefix
    if output_prefix == live_prefix:
        raise ReplayError(
            f"--output-prefix {output_prefix!r} is CFN_TOPIC_PREFIX: to write into the live "
            "topics, use --live instead"
        )
    return output_prefix if output_prefix is not None else SHADOW + live_prefix


LIVE_SKIPPED = ("incident-state",)  # tables the live worker keeps; see run_replay


@dataclass(frozen=True)
class Bound:
    """A replay boundary: a point in time (epoch ms) or one partition's offset."""

    ms: int | None = None
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def parse(cls, text: str) -> Bound:
        """ "2026-11-22T10:00:00Z" (any ISO 8601) or "3:1200" (partition:offset).

        Raises:
            ValueError: neither form.
        """
        head, sep, tail = text.partition(":")
        if sep and head.isdigit() and tail.isdigit():
            return cls(partition=int(head), offset=int(tail))
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{text!r} is neither an ISO time nor partition:offset (e.g. 3:1200)"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone; add Z or +00:00")
        return cls(ms=int(moment.timestamp() * 1000))


async def _ranges(
    consumer: AIOKafkaConsumer, topic: str, start: Bound | None, stop: Bound | None
) -> dict[TopicPartition, tuple[int, int]]:
    """[first, end) offsets per partition for the requested range."""
    cluster = await internals.fetch_metadata(consumer)  # the consumer's own view is lazy
    partitions = sorted(cluster.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in partitions]
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)

    async def resolve(
        bound: Bound | None, default: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        if bound is None:
            return dict(default)
        if bound.ms is not None:
            found = await consumer.offsets_for_times({tp: bound.ms for tp in tps})
            return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}
        chosen = dict(default)
        for tp in tps:
            if tp.partition == bound.partition and bound.offset is not None:
                chosen[tp] = bound.offset
        return chosen

    first = await resolve(start, begin)
    last = await resolve(stop, end)
    return {
        tp: (first[tp], min(last[tp], end[tp])) for tp in tps if first[tp] < min(last[tp], end[tp])
    }


async def _read(
    settings: WorkerSettings,
    start: Bound | None,
    stop: Bound | None,
    progress: Callable[..., Progress],
) -> tuple[Ranges, list[Any]]:
    """The range of `cfn.raw` and its committed records, reporting progress as it reads."""
    topic = settings.topic("raw")
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings.bootstrap, settings.security),
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        ranges = await _ranges(consumer, topic, start, stop)
        if not ranges:
            return ranges, []
        consumer.assign(list(ranges))
        for tp, (first, _end) in ranges.items():
            consumer.seek(tp, first)
        report = progress(
            "read", sum(end - first for first, end in ranges.values()), partitions=len(ranges)
        )
        records: list[Any] = []
        remaining = dict(ranges)
        at = {tp: first for tp, (first, _end) in ranges.items()}  # progress, in offsets
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, items in batch.items():
                records.extend(r for r in items if r.offset < remaining[tp][1])
            # Done by position, not by the last record: the end offset may follow a
            # transaction marker or aborted records, which a read_committed consumer never sees.
            for tp in list(remaining):
                at[tp] = min(await consumer.position(tp), ranges[tp][1])
                if at[tp] >= ranges[tp][1]:
                    del remaining[tp]
                    consumer.pause(tp)
            done = sum(at[tp] - first for tp, (first, _end) in ranges.items())
            report.update(done, len(ranges) - len(remaining))
        report.finish(report.total, len(ranges))
        return ranges, records
    finally:
        await consumer.stop()


def _received_ms(record: Any) -> int:
    """When ingest accepted the record (its cfn-received-at header, else the log timestamp)."""
    value = header_map(record.headers).get("cfn-received-at")
    return int(value) if value else int(record.timestamp)


def live_horizon(started_at: float, stop: Bound | None, records: Iterable[Any]) -> float:
    """The time at which a replay into the live topics fires its timers, epoch seconds.

    A live replay must write nothing the live worker would not have written by now: no
    expiry of an incident that is still open, no cfn.incident-state tombstone before its
    retention has passed, no rate window the live watermark has not closed. So its timers fire
    at the wall clock when the replay started (`started_at`, injected), not at FAR_FUTURE, and
    at the end of the range when that is earlier: with `--to`, records after the range (an
    END, say) were not replayed, and the live worker had fired only the timers due before
    they arrived. For a time bound that is the bound; for a partition:offset bound it is the
    latest received_at among the replayed records of that partition. Firing fewer timers is
    always safe (the live worker wrote those records itself); firing more is not.

    Args:
        started_at: the wall clock when the replay started.
        stop: the `--to` bound, or None for up to the end of `cfn.raw`.
        records: the replayed records.
    """
    if stop is None:
        return started_at
    if stop.ms is not None:
        return min(started_at, stop.ms / 1000)
    bounded = [_received_ms(r) for r in records if r.partition == stop.partition]
    if not bounded:
        bounded = [_received_ms(r) for r in records]
    return min(started_at, max(bounded, default=0) / 1000)


def process(
    settings: WorkerSettings,
    records: Iterable[Any],
    until: float | None = None,
    progress: Callable[[str, int], Progress] | None = None,
) -> list[Output]:
    """Run records through a fresh pipeline in arrival order; then fire the timers due `until`.

    The order is (received_at, partition, offset): the order ingest accepted them, so a replay
    decides dedup and correlation as the live run did for the same range. The in-memory driver
    (processors/driver.py) runs them, as the tests do.

    Args:
        settings: the worker's settings (windows, timeouts, partitions).
        records: raw records (value, key, headers, partition, offset, timestamp).
        until: when the replay ends, epoch seconds. None (a shadow replay) is FAR_FUTURE: every
            timer fires, so open incidents expire, every rate window closes and every closed
            incident is tombstoned in cfn.incident-state. A live replay passes `live_horizon`;
            rate windows then close only as far as the live watermark would have moved by then
            (`until` minus the idle delay).
        progress: makes a progress reporter for a stage and its total, or None for silence.

    Returns:
        Every output except the internal rate inputs, in the order to write them.
    """
    end = FAR_FUTURE if until is None else until
    driver = Driver.over_dicts(settings, lambda: end)
    ordered = sorted(records, key=lambda r: (_received_ms(r), r.partition, r.offset))
    report = progress("process", len(ordered)) if progress else None
    outputs: list[Output] = []
    for i, record in enumerate(ordered, 1):
        outputs += driver.feed(record)
        if report and i % 500 == 0:
            report.update(i)
    if report:
        report.finish(len(ordered))
    # An idle live partition's watermark trails the wall clock by the idle delay.
    mark = int(FAR_FUTURE) if until is None else int(until - driver.pipeline.rates.idle_delay_s)
    return outputs + driver.settle(end, mark)


@dataclass(frozen=True)
class Plan:
    """What a replay is about to do, shown before it writes anything."""

    raw_topic: str
    ranges: Mapping[int, tuple[int, int]]  # partition -> [first, end) offsets of cfn.raw
    records: int  # raw records read (committed ones: fewer than the offsets span if aborted)
    until: float | None  # when the timers fire (None: FAR_FUTURE, every timer)
    live: bool
    topics: Mapping[str, int]  # topic to write -> records for it


def format_plan(plan: Plan) -> str:
    """The plan as the lines printed before writing (pure; tested)."""
    where = "LIVE topics" if plan.live else "shadow topics"
    lines = [f"cfn replay plan: {plan.records:,} records of {plan.raw_topic} into {where}"]
    for partition, (first, end) in sorted(plan.ranges.items()):
        lines.append(
            f"  read partition {partition}: offsets {first}..{end - 1} ({end - first:,} offsets)"
        )
    if plan.until is None:
        lines.append("  timers: all fire (open incidents expire, every window closes)")
    else:
        moment = datetime.fromtimestamp(plan.until, UTC).isoformat(timespec="seconds")
        lines.append(
            f"  timers: fire up to {moment.replace('+00:00', 'Z')}, as the live worker did"
        )
    for topic, count in plan.topics.items():
        lines.append(f"  write {topic}: {count:,} records")
    if plan.live:
        lines += [f"  leave {role}: the live worker keeps it" for role in LIVE_SKIPPED]
    return "\n".join(lines)


def _plan_topics(prefix: str, outputs: list[Output], live: bool) -> dict[str, int]:
    names = topic_names(prefix)
    skipped = LIVE_SKIPPED if live else ()
    counts = {names[role]: 0 for role in OUTPUT_ROLES if role not in skipped}
    for out in outputs:
        counts[names[out.role]] += 1
    return counts


async def _write(
    settings: WorkerSettings,
    prefix: str,
    outputs: list[Output],
    progress: Callable[[str, int], Progress],
) -> None:
    """Create every output topic under `prefix` and write `outputs` (None values are
    tombstones, which cfn.incident-state needs)."""
    target = dataclasses.replace(settings, topic_prefix=prefix)
    roles = [(role, target.topic(role)) for role in OUTPUT_ROLES]
    await ensure_topics(
        settings.bootstrap,
        roles,
        settings.partitions,
        settings.replication,
        security=settings.security,
    )
    producer = AIOKafkaProducer(
        **aiokafka_options(settings.bootstrap, settings.security),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    report = progress("write", len(outputs))
    await producer.start()
    try:
        futures = []
        for i, out in enumerate(outputs, 1):
            futures.append(
                await producer.send(target.topic(out.role), key=out.key, value=out.value)
            )
            if i % 500 == 0:
                report.update(i)
        await producer.flush()
        await asyncio.gather(*futures)
        report.finish(len(outputs))
    finally:
        await producer.stop()


def _ask(prompt: str) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run_replay(
    start: str,
    stop: str | None,
    output: str | None,
    *,
    live: bool = False,
    yes: bool = False,
    environ: Mapping[str, str] | None = None,
    wall_clock: Callable[[], float] = time.time,
    interactive: bool | None = None,
    ask: Callable[[str], bool] = _ask,
    err: TextIO | None = None,
) -> int:
    """Foreground entry for `cfn replay`.

    Args:
        start / stop: the `--from` and `--to` bounds (see `Bound.parse`).
        output: `--output-prefix`, or None for the shadow prefix.
        live: `--live`: write into the live topics (their timers fire at `live_horizon`).
        yes: `--yes`: do not ask before a live write.
        environ: CFN_* settings (default: the process environment).
        wall_clock: epoch seconds; read once, when the replay starts.
        interactive: whether a person can answer (default: stdin is a terminal). A live replay
            that is not interactive needs `yes`; it is refused before reading anything.
        ask: asks the question and says whether the answer was yes.
        err: where progress goes (default: stderr; one updating line when it is a terminal).

    Returns:
        The exit status: 0 done (or nothing to do), 1 declined, 2 bad arguments.
    """
    err = sys.stderr if err is None else err
    try:
        settings = WorkerSettings.from_env(environ)  # ConfigError is a ValueError
        prefix = choose_prefix(settings.topic_prefix, output, live)
        first = Bound.parse(start)
        last = Bound.parse(stop) if stop else None
    except ValueError as exc:
        print(f"cfn replay: {exc}", file=sys.stderr)
        return 2
    if interactive is None:
        interactive = sys.stdin.isatty()
    if live and not yes and not interactive:
        print(
            "cfn replay: --live writes into the live topics; without a terminal to confirm "
            "on, pass --yes as well",
            file=sys.stderr,
        )
        return 2
    started_at = wall_clock()
    began = time.monotonic()
    tty = err.isatty()

    def progress(stage: str, total: int, partitions: int | None = None) -> Progress:
        return Progress(stage, total, err, tty=tty, clock=time.monotonic, partitions=partitions)

    ranges, records = asyncio.run(_read(settings, first, last, progress))
    if not records:
        print("cfn replay: nothing in that range", file=sys.stderr)
        return 0
    until = live_horizon(started_at, last, records) if live else None
    outputs = process(settings, records, until, progress)
    if live:
        # The live worker's cfn.incident-state is already right, and a table keeps the last
        # record per key by offset, not the highest version: a replayed version written after a
        # newer live one would stand in for it (and survive compaction), and an incident the
        # worker has forgotten would come back with no tombstone to follow.
        outputs = [out for out in outputs if out.role not in LIVE_SKIPPED]
    plan = Plan(
        raw_topic=settings.topic("raw"),
        ranges={tp.partition: span for tp, span in ranges.items()},
        records=len(records),
        until=until,
        live=live,
        topics=_plan_topics(prefix, outputs, live),
    )
    print(format_plan(plan), flush=True)
    if live and not yes and not ask(f"Write {len(outputs):,} records into the LIVE topics? [y/N] "):
        print("cfn replay: nothing written", file=sys.stderr)
        return 1
    asyncio.run(_write(settings, prefix, outputs, progress))
    counts: dict[str, int] = {}
    for out in outputs:
        counts[out.role] = counts.get(out.role, 0) + 1
    summary = ", ".join(f"{n} {role}" for role, n in sorted(counts.items()))
    print(
        f"cfn replay: {len(records)} raw records -> {summary} into {prefix}* "
        f"in {time.monotonic() - began:.1f}s"
    )
    return 0
