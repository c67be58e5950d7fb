"""The in-memory driver: a Pipeline run over lists instead of Kafka topics.

Raw records go through `Pipeline.on_raw` in the order given; what the pipeline writes to
`cfn.rate-input` (rate sums, flap openings) is read on the partition the topic would give it (by
key, with Kafka's partitioner), and the flap marks that reading writes back on the partitions
they name; rate windows close at a watermark and timers fire at a time. `cfn replay` and the
unit tests run the pipeline through it; the worker's engine does the same over Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry

from cfn.partition import partition_for
from cfn.processors.metrics import WorkerMetrics
from cfn.processors.pipeline import Output, Pipeline, header_map
from cfn.processors.settings import WorkerSettings

RATE_INPUT = "rate-input"  # the role of the repartition topic's records


class RawRecord(Protocol):
    """A `cfn.raw` record as a consumer hands it over (aiokafka's ConsumerRecord is one)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True)
class Raw:
    """A `cfn.raw` record made by hand (tests): the value, key and headers ingest
    writes, where it sits, and its log timestamp in epoch ms."""

    value: bytes | None
    key: bytes | None
    partition: int = 0
    offset: int = 0
    timestamp: int = 0
    headers: Sequence[tuple[str, bytes]] = ()


class Driver:
    """Feeds raw records through one Pipeline and hands its repartitioned records back to it.

    Each step returns what the pipeline wrote to the output topics, in order; what it wrote to
    `cfn.rate-input` waits in `rate_inputs` (to be read by their keys' partitions) or `marks`
    (flap marks, to be read by the partitions they name) until a step reads them. It trades the
    worker's interleaving for a fixed order: every raw record first, then the rate inputs, the
    rate windows' close, the marks and the timers (`settle`), as `cfn replay` decides it.
    """

    def __init__(self, pipeline: Pipeline, partitions: int) -> None:
        self.pipeline = pipeline
        self.partitions = partitions  # of cfn.rate-input, which its records' keys are placed on
        self.rate_inputs: list[Output] = []
        self.marks: list[Output] = []
        self.raw_partitions: set[int] = set()  # raw partitions seen: the ones timers fire on
        self.rate_partitions: set[int] = set()  # rate-input partitions read: windows close there

    @classmethod
    def over_dicts(cls, settings: WorkerSettings, clock: Callable[[], float]) -> Driver:
        """A driver of a fresh pipeline over plain dicts, its metrics on a registry of its own."""
        pipeline = Pipeline(settings, {}, {}, {}, WorkerMetrics.create(CollectorRegistry()), clock)
        return cls(pipeline, settings.partitions)

    def feed(self, record: RawRecord) -> list[Output]:
        """One raw record through the pipeline, then its partition's rate sums drained, so the
        rate counter sees events one by one, in the order fed."""
        self.raw_partitions.add(record.partition)
        produced = self.pipeline.on_raw(
            record.value or b"",
            record.key,
            header_map(record.headers),
            record.partition,
            record.offset,
            record.timestamp,
        )
        outputs = self._keep(produced, self.rate_inputs)
        self.rate_inputs.extend(self.pipeline.drain_rate_inputs(record.partition))
        return outputs

    def read_rate_inputs(self) -> list[Output]:
        """The waiting rate inputs, each read on the partition its key is placed on; the flap
        marks this writes wait in `marks`."""
        waiting, self.rate_inputs = self.rate_inputs, []
        outputs: list[Output] = []
        for record in waiting:
            target = partition_for(record.key, self.partitions)
            self.rate_partitions.add(target)
            assert record.value is not None  # rate inputs always carry a value
            outputs += self._keep(self.pipeline.on_rate_input(record.value, target), self.marks)
        return outputs

    def close_rates(self, watermark: int) -> list[Output]:
        """Every rate-input partition read so far moves its watermark to `watermark` (epoch s):
        the windows it passes close, and the detectors judge them."""
        outputs: list[Output] = []
        for target in sorted(self.rate_partitions):
            outputs += self._keep(self.pipeline.finish_rates(target, watermark), self.marks)
        return outputs

    def read_marks(self) -> list[Output]:
        """The waiting flap marks, each read on the incident's own partition."""
        waiting, self.marks = self.marks, []
        outputs: list[Output] = []
        for mark in waiting:
            assert mark.value is not None and mark.partition is not None
            outputs += self._keep(
                self.pipeline.on_rate_input(mark.value, mark.partition), self.rate_inputs
            )
        return outputs

    def tick(self, now: float) -> list[Output]:
        """The timers of every raw partition seen, fired at `now` (epoch s)."""
        outputs: list[Output] = []
        for partition in sorted(self.raw_partitions):
            outputs += self._keep(self.pipeline.on_tick(now, partition), self.rate_inputs)
        return outputs

    def settle(self, now: float, watermark: int) -> list[Output]:
        """What follows the last raw record: the rate inputs read (rates see the partitions they
        see live, so each late/on-time decision is the live one's), the windows closed at
        `watermark`, the flap marks read, and the raw partitions' timers fired at `now`, last,
        so that expiry and retention see every mark, as live, where they fire long after the
        marks of incidents that are not yet stale."""
        outputs = self.read_rate_inputs()
        outputs += self.close_rates(watermark)
        outputs += self.read_marks()
        outputs += self.tick(now)
        return outputs

    def run(self, records: Iterable[RawRecord], now: float, watermark: int) -> list[Output]:
        """`feed` every record in the order given, then `settle`: every output, in order."""
        outputs: list[Output] = []
        for record in records:
            outputs += self.feed(record)
        return outputs + self.settle(now, watermark)

    @staticmethod
    def _keep(produced: list[Output], repartitioned: list[Output]) -> list[Output]:
        """The outputs to output topics; the rest, for cfn.rate-input, goes to `repartitioned`."""
        repartitioned.extend(out for out in produced if out.role == RATE_INPUT)
        return [out for out in produced if out.role != RATE_INPUT]
