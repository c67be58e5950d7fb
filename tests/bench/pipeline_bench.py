"""Section 2: worker throughput over a pre-filled raw topic, against a bare Faust agent.

One raw topic (12 partitions) is filled once with N realistic records (tests/workload.py:
START/END pairs, one-offs, ~20% redeliveries, the headers ingest writes). Each round then
reads it with a fresh consumer group, three ways: the bare agent, one `cfn worker`, and two
`cfn worker`s in one group. Startup is excluded, and a run stops at N records or at the end
of a time box (Sizes.pipeline_box_s), whichever comes first, so that a slow contender cannot
blow the time budget:

* events/s for one process: from the first /readyz sample whose `processed` count is above 0
  to the first that reaches N (or the last in the box), counts subtracted;
* two workers vs one: between offset commits seen after every process is ready, both sides
  measured the same way, because a worker that joins late makes the group re-deliver
  uncommitted records, which a `processed` count would count twice.

Also: restore time (a worker whose changelogs hold K dedup ids and K/4 open incidents, time to
/readyz 200, against a start with empty changelogs, plus its RSS growth per key) and a py-spy
profile of one worker.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from cfn.config import changelog_topic, topic_names
from cfn.topics import ensure_topics
from tests.bench.core import (
    Context,
    bench_env,
    cpu_seconds,
    finite_or_none,
    median,
    progress,
    ratio,
    rss_bytes,
)
from tests.kafka_util import produce_with_headers
from tests.services import Process, free_port, start_worker, wait_ready
from tests.workload import Workload, build

PARTITIONS = 12
WORKER_ENV = {"CFN_TICK_INTERVAL": "1s"}  # the product default; tests/services uses 0.5 s


@dataclass
class Sample:
    t: float  # monotonic, right after the /readyz answers
    processed: int  # summed over the processes (a process that did not answer counts 0)
    ready: bool  # every process answered 200
    committed: int  # the group's committed offsets on the raw topic, summed
    tc: float  # monotonic, right after the committed offsets arrived
    cpu: float  # CPU seconds of the processes so far
    rss: int  # resident bytes of the processes


def _crash_reason(output: str) -> str:
    """The most telling line of a crashed worker's log: the last exception named in it."""
    names = [
        name
        for name in re.findall(r"\b(\w+(?:Error|Fenced|Exception))\b[:(]", output)
        if name != "CancelledError"  # how the shutdown after any crash looks
    ]
    return names[0] if names else "see the log"


class WorkerCrashed(RuntimeError):
    """A process under test exited on its own; its log says why."""

    def __init__(self, process: Process) -> None:
        self.log_tail = process.output.splitlines()[-60:]
        self.reason = _crash_reason(process.output)
        super().__init__(f"a process exited on its own ({self.reason})")


@dataclass
class Prefilled:
    prefix: str
    raw_topic: str
    n: int
    unique_events: int
    incidents: int


# ---- filling the topic -----------------------------------------------------------------------


def workload_shape(n: int) -> tuple[int, int]:
    """(incidents, one-offs) for about n raw records: ~1.2 copies each, 80% in START/END pairs."""
    unique = max(3, round(n / 1.2))
    incidents = int(unique * 0.4)
    return incidents, max(1, unique - 2 * incidents)


def prefill(
    ctx: Context, n: int, partitions: int = PARTITIONS, work: Workload | None = None
) -> Prefilled:
    """A fresh prefix whose raw topic holds about `n` realistic records (`work`, if given: the
    same records in several topics)."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topics = list(topic_names(prefix).items())
    asyncio.run(ensure_topics(ctx.bootstrap, topics, partitions, 1))
    if work is None:
        incidents, one_offs = workload_shape(n)
        started = time.monotonic()
        work = build(incidents, one_offs, int(time.time() * 1000))
        progress(
            f"pipeline: built {len(work.records)} raw records "
            f"({len(work.unique_event_ids)} unique, {work.pairs} START/END pairs) "
            f"in {time.monotonic() - started:.1f}s; producing"
        )
    started = time.monotonic()
    raw = f"{prefix}raw"
    acked = asyncio.run(produce_with_headers(ctx.bootstrap, raw, work.records))
    progress(f"pipeline: {acked} records in {raw} in {time.monotonic() - started:.1f}s")
    return Prefilled(prefix, raw, acked, len(work.unique_event_ids), work.pairs)


async def start_group_at_end(bootstrap: str, group: str, topics: list[str]) -> None:
    """Commit end offsets for a fresh group on `topics`.

    Every run of the worker uses a fresh group on the same prefix; without this it would also
    read every tick and rate input that earlier runs left in those topics.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()


# ---- watching progress -----------------------------------------------------------------------


async def _readyz(session: aiohttp.ClientSession, port: int) -> tuple[int, bool]:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json(content_type=None)
            return int(body.get("processed", 0)), resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return 0, False


async def _committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    """The group's committed offsets on `topic`, summed; 0 until the group has any."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:  # no coordinator yet: the offsets topic is created on first use
        return 0
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def watch(
    bootstrap: str,
    group: str,
    topic: str,
    processes: list[Process],
    *,
    done: Callable[[Sample], bool],
    box_from: Callable[[Sample], bool] | None = None,
    box_s: float = 0.0,
    timeout: float = 600.0,
    poll: float = 0.1,
) -> list[Sample]:
    """Sample /readyz of every process and the group's committed offsets.

    Stops when `done` holds, when `box_s` seconds have passed since `box_from` first held
    (the time box that keeps a slow contender from blowing the time budget), or after
    `timeout`; the caller tells which from the samples.

    Raises:
        RuntimeError: a process exited.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    box_start: float | None = None
    pids = [p.proc.pid for p in processes if p.proc is not None]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                for process in processes:
                    if process.proc is not None and process.proc.poll() is not None:
                        raise WorkerCrashed(process)
                answers = await asyncio.gather(*(_readyz(session, p.port) for p in processes))
                t = time.monotonic()
                cpu = cpu_seconds(pids)
                committed = await _committed(admin, group, topic)
                sample = Sample(
                    t=t,
                    processed=sum(count for count, _ in answers),
                    ready=all(ok for _, ok in answers),
                    committed=committed,
                    tc=time.monotonic(),
                    cpu=cpu,
                    rss=rss_bytes(pids),
                )
                samples.append(sample)
                if box_start is None and box_from is not None and box_from(sample):
                    box_start = t
                if done(sample):
                    return samples
                if box_start is not None and t - box_start >= box_s:
                    return samples
                if t > deadline:
                    return samples
                await asyncio.sleep(poll)
    finally:
        await admin.close()


def processed_rate(samples: list[Sample], n: int, started: float) -> dict[str, Any]:
    """Events/s from the first processed record to the N-th (or to the end of the time box),
    and events per CPU-second of the process over the same span."""
    first = next((s for s in samples if s.processed > 0), None)
    last = next((s for s in samples if s.processed >= n), samples[-1] if samples else None)
    ready = next((s for s in samples if s.ready), None)
    result: dict[str, Any] = {
        "eps": None,
        "eps_per_cpu_s": None,
        "ready_s": ready.t - started if ready else None,
        "rss_at_ready": ready.rss if ready else None,
        "records": last.processed if last else 0,
        "complete": last is not None and last.processed >= n,
    }
    if first is None or last is None or last.t <= first.t:
        return result  # all of it between two samples: too quick to time
    work = last.processed - first.processed
    cpu = last.cpu - first.cpu
    result.update(
        eps=work / (last.t - first.t),
        eps_per_cpu_s=work / cpu if cpu > 0 else None,
        seconds=last.t - first.t,
        startup_s=first.t - started,
    )
    return result


def timeline(samples: list[Sample], started: float, step: float = 1.0) -> list[list[float]]:
    """[seconds since start, processed, committed], about one point per `step` seconds."""
    points: list[list[float]] = []
    for s in samples:
        if not points or s.t - started - points[-1][0] >= step or s is samples[-1]:
            points.append([round(s.t - started, 2), s.processed, s.committed])
    return points


def committed_per_cpu(samples: list[Sample]) -> float | None:
    """Records committed per CPU-second of the processes, over the same span as
    `committed_rate`: a second worker that only adds coordination shows here."""
    commits: list[Sample] = []
    for previous, s in itertools.pairwise(samples):
        if s.committed > previous.committed and (commits or s.ready):
            commits.append(s)
    if len(commits) < 2 or commits[-1].cpu <= commits[0].cpu:
        return None
    return (commits[-1].committed - commits[0].committed) / (commits[-1].cpu - commits[0].cpu)


def committed_rate(samples: list[Sample]) -> float | None:
    """Events/s between the first offset commit seen after every process is ready and the
    last commit seen, both at the moment a commit landed."""
    commits: list[Sample] = []
    for previous, s in itertools.pairwise(samples):
        if s.committed > previous.committed and (commits or s.ready):
            commits.append(s)
    if len(commits) < 2 or commits[-1].tc <= commits[0].tc:
        return None
    return (commits[-1].committed - commits[0].committed) / (commits[-1].tc - commits[0].tc)


_REBUILT = re.compile(
    r"state rebuilt for partitions .*?: (\d+) dedup ids, (\d+) incidents, (\d+) rate keys "
    r"in ([\d.]+)s"
)


def rebuilt(log: str) -> dict[str, float] | None:
    """The worker's last "state rebuilt" log line (logged at INFO), as numbers."""
    found = _REBUILT.findall(log)
    if not found:
        return None
    dedup, incidents, rates, seconds = found[-1]
    return {
        "dedup_keys": int(dedup),
        "incident_keys": int(incidents),
        "rate_keys": int(rates),
        "rebuild_s": float(seconds),
    }


# ---- the three contenders --------------------------------------------------------------------


def _start_bare(ctx: Context, topic: str, app_id: str) -> Process:
    port = free_port()
    process = Process(
        [sys.executable, "-m", "tests.bench.bare_agent"],
        bench_env(
            {
                "BENCH_AGENT_BOOTSTRAP": ctx.bootstrap,
                "BENCH_AGENT_TOPIC": topic,
                "BENCH_AGENT_APP_ID": app_id,
                "BENCH_AGENT_PORT": str(port),
                "BENCH_AGENT_DATA_DIR": str(ctx.tmp / f"bare-agent-{port}"),
            }
        ),
        ctx.tmp / f"bare-agent-{port}.log",
        port=port,
    )
    process.start()
    return process


def start_cfn(
    ctx: Context, pre: Prefilled, app_id: str, env: dict[str, str] | None = None
) -> Process:
    return start_worker(
        ctx.tmp,
        ctx.bootstrap,
        pre.prefix,
        app_id,
        {**WORKER_ENV, **(env or {})},
        partitions=PARTITIONS,
        wait=False,
    )


def _fresh_group(ctx: Context, pre: Prefilled, app_id: str) -> None:
    asyncio.run(start_group_at_end(ctx.bootstrap, app_id, [f"{pre.prefix}rate-input"]))


def _stop(processes: list[Process]) -> None:
    for process in processes:
        process.stop(timeout=30)


def _watch_single(ctx: Context, pre: Prefilled, app_id: str, process: Process) -> list[Sample]:
    box = ctx.sizes.pipeline_box_s
    return asyncio.run(
        watch(
            ctx.bootstrap,
            app_id,
            pre.raw_topic,
            [process],
            done=lambda s: s.processed >= pre.n and s.committed >= pre.n,
            box_from=lambda s: s.processed > 0,
            box_s=box,
            timeout=box + 180,
        )
    )


def _measured(
    ctx: Context, pre: Prefilled, app_id: str, process: Process, started: float
) -> dict[str, Any]:
    """Watch one started process through the topic, stop it, and say how fast it went."""
    try:
        samples = _watch_single(ctx, pre, app_id, process)
    finally:
        _stop([process])
    result = processed_rate(samples, pre.n, started)
    result["committed_eps"] = committed_rate(samples)
    result["committed_per_cpu_s"] = committed_per_cpu(samples)
    result["timeline"] = timeline(samples, started)
    return result


def run_bare(ctx: Context, pre: Prefilled, app_id: str) -> dict[str, Any]:
    started = time.monotonic()
    process = _start_bare(ctx, pre.raw_topic, app_id)
    return _measured(ctx, pre, app_id, process, started)


QUIX_VERSION = "3.28.1"  # the peer's quixstreams, a bench extra in its own venv
QUIX_VENV = Path.home() / ".cache" / "cfn" / "bench" / f"quixstreams-{QUIX_VERSION}"


def quix_python() -> Path:
    """The interpreter of the quixstreams peer: a venv of its own (quixstreams pins its own
    confluent-kafka, rocksdict and pydantic), made once and kept in ~/.cache/cfn/bench."""
    python = QUIX_VENV / "bin" / "python"
    check = [str(python), "-c", "import quixstreams, orjson"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    progress(f"pipeline: installing quixstreams {QUIX_VERSION} into {QUIX_VENV}")
    shutil.rmtree(QUIX_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}", "orjson"],
        check=True,
        timeout=900,
    )
    return python


def _start_quix(ctx: Context, pre: Prefilled, app_id: str) -> Process:
    port = free_port()
    process = Process(
        [str(quix_python()), str(Path(__file__).parent / "quix_peer.py")],
        bench_env(
            {
                "QUIX_PEER_BOOTSTRAP": ctx.bootstrap,
                "QUIX_PEER_TOPIC": pre.raw_topic,
                "QUIX_PEER_OUT": f"{pre.prefix}quix-unique",
                "QUIX_PEER_GROUP": app_id,
                "QUIX_PEER_PORT": str(port),
                "QUIX_PEER_STATE": str(ctx.tmp / f"quix-state-{port}"),
            }
        ),
        ctx.tmp / f"quix-peer-{port}.log",
        port=port,
    )
    process.start()
    return process


def run_quix(ctx: Context, pre: Prefilled, app_id: str) -> dict[str, Any]:
    """The quixstreams exactly-once dedup peer through the same topic; counted like the worker
    (its /readyz `processed`, and the group's committed offsets)."""
    started = time.monotonic()
    process = _start_quix(ctx, pre, app_id)
    return _measured(ctx, pre, app_id, process, started)


def run_one(
    ctx: Context, pre: Prefilled, app_id: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One `cfn worker` through the pre-filled topic; `env` adds to (or overrides, e.g. the
    bootstrap and security settings) its environment."""
    _fresh_group(ctx, pre, app_id)
    started = time.monotonic()
    process = start_cfn(ctx, pre, app_id, env)
    return _measured(ctx, pre, app_id, process, started)


def run_two(ctx: Context, pre: Prefilled, app_id: str) -> dict[str, Any]:
    _fresh_group(ctx, pre, app_id)
    started = time.monotonic()
    processes = [start_cfn(ctx, pre, app_id), start_cfn(ctx, pre, app_id)]
    box = ctx.sizes.pipeline_box_s
    try:
        samples = asyncio.run(
            watch(
                ctx.bootstrap,
                app_id,
                pre.raw_topic,
                processes,
                done=lambda s: s.committed >= pre.n,
                box_from=lambda s: s.ready and s.committed > 0,
                box_s=box,
                timeout=box + 180,
            )
        )
    finally:
        _stop(processes)
    ready = any(s.ready for s in samples)
    return {
        "committed_eps": committed_rate(samples),
        "committed_per_cpu_s": committed_per_cpu(samples),
        "both_ready": ready,
        "committed": samples[-1].committed if samples else 0,
        "timeline": timeline(samples, started),
    }


# ---- restore ---------------------------------------------------------------------------------


def synthetic_state(keys: int, now_s: int) -> dict[str, list[tuple[bytes, bytes, int]]]:
    """Changelog records (key, value, partition) as the worker's tables write them (UTF-8 key,
    JSON value; the incidents table in its own format), for `keys` dedup ids and keys // 4 open
    incidents, made by the real classes."""
    from cfn.processors import incident
    from cfn.processors.correlate import Correlator
    from cfn.processors.dedup import Deduplicator, partition_of_seen
    from cfn.schemas import jsonio
    from cfn.schemas.payload import Notification

    dedup_store: dict[str, Any] = {}
    dedup = Deduplicator(dedup_store, 24 * 3600.0)
    for i in range(keys):
        dedup.is_duplicate(f"ev_{uuid.UUID(int=i).hex}", now_s, i % PARTITIONS)
    incident_store: dict[str, incident.Incident] = {}
    correlator = Correlator(
        incident_store, lambda _t: 24 * 3600.0, orphan_hold_s=600.0, closed_retention_s=86400.0
    )
    for i in range(keys // 4):
        correlator.on_event(
            Notification(
                event_id=f"ev_{uuid.UUID(int=keys + i).hex}",
                kind="alert",
                tenant="default",
                account_id=f"{i % 5000:032x}",
                policy_id=f"pol-{i % 37}",
                policy_name="Production origin health",
                alert_type="health_check_status_notification",
                event="start",
                correlation_id=f"corr-{i:012d}",
                ts=now_s - 60,
                received_at=now_s * 1000,
                name="Origin health alert",
                text="Origin is unhealthy",
                data={},
            ),
            i % PARTITIONS,
        )
    return {
        "dedup": [
            (k.encode(), jsonio.dumps(v), partition_of_seen(v)) for k, v in dedup_store.items()
        ],
        "incidents": [(k.encode(), incident.encode(v), v.p) for k, v in incident_store.items()],
    }


async def _produce_changelog(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]
) -> None:
    # In one transaction, as the worker's exactly-once writes are: each partition then ends
    # with a commit marker, which recovery has to read past.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        transactional_id=f"bench-state-{uuid.uuid4().hex[:8]}",
    )
    await producer.start()
    try:
        async with producer.transaction():
            futures = [
                await producer.send(topic, key=key, value=value, partition=partition)
                for key, value, partition in records
            ]
            await producer.flush()
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _time_to_ready(ctx: Context, pre: Prefilled, app_id: str) -> dict[str, Any]:
    """Start a worker, time it to /readyz 200, note its RSS and its "state rebuilt" line."""
    _fresh_group(ctx, pre, app_id)
    started = time.monotonic()
    process = start_cfn(ctx, pre, app_id, {"CFN_LOG_LEVEL": "INFO"})
    try:
        wait_ready(process, process.port, "/readyz", timeout=300)
        ready_s = time.monotonic() - started
        assert process.proc is not None
        rss = rss_bytes([process.proc.pid])
    finally:
        _stop([process])
    return {
        "ready_s": ready_s,
        "rss": rss,
        "rebuilt": rebuilt(process.output),
    }


def measure_restore(ctx: Context, pre: Prefilled, empties: list[dict[str, Any]]) -> dict[str, Any]:
    """Time to ready of a worker whose changelogs hold K dedup ids and K/4 open incidents,
    against the same worker with empty changelogs; and its RSS growth per key."""
    keys = ctx.sizes.restore_keys
    state = synthetic_state(keys, int(time.time()))
    app_id = f"bench-restore-{uuid.uuid4().hex[:6]}"
    # The worker's changelog layout: one topic, each record keyed `<table>:<key>`.
    records = [
        (f"{table}:".encode() + key, value, partition)
        for table in ("dedup", "incidents")
        for key, value, partition in state[table]
    ]
    asyncio.run(
        ensure_topics(ctx.bootstrap, [("changelog", changelog_topic(app_id))], PARTITIONS, 1)
    )
    started = time.monotonic()
    asyncio.run(_produce_changelog(ctx.bootstrap, changelog_topic(app_id), records))
    progress(
        f"pipeline: restore: {len(state['dedup'])} dedup ids and {len(state['incidents'])} "
        f"incidents written to {app_id}'s changelogs in {time.monotonic() - started:.1f}s"
    )
    rounds = []
    for r in range(ctx.sizes.restore_runs):
        # The baseline: the same start with empty changelogs. The one-worker runs are exactly
        # that (a fresh app id), so their time to ready and RSS at ready serve when present.
        if r < len(empties):
            empty = empties[r]
        else:
            empty = _time_to_ready(ctx, pre, f"bench-empty-{uuid.uuid4().hex[:6]}")
        # A fresh group each time: the state comes from the changelog, not from the offsets.
        full_id = app_id if r == 0 else f"{app_id}-{r}"
        if r > 0:
            topic = changelog_topic(full_id)
            asyncio.run(ensure_topics(ctx.bootstrap, [("changelog", topic)], PARTITIONS, 1))
            asyncio.run(_produce_changelog(ctx.bootstrap, topic, records))
        full = _time_to_ready(ctx, pre, full_id)
        progress(
            f"pipeline: restore run {r + 1}: ready in {full['ready_s']:.1f}s with state, "
            f"{empty['ready_s']:.1f}s empty; rebuilt {full['rebuilt']}"
        )
        rounds.append({"empty": empty, "full": full})
    total_keys = len(state["dedup"]) + len(state["incidents"])
    rss_growth = [
        (r["full"]["rss"] - r["empty"]["rss"]) / total_keys
        for r in rounds
        if r["full"]["rss"] and r["empty"]["rss"]
    ]
    recognised = all(
        r["full"]["rebuilt"] is not None
        and r["full"]["rebuilt"]["dedup_keys"] == len(state["dedup"])
        and r["full"]["rebuilt"]["incident_keys"] == len(state["incidents"])
        for r in rounds
    )
    return {
        "dedup_keys": len(state["dedup"]),
        "incident_keys": len(state["incidents"]),
        "state_recognised": recognised,
        "runs": rounds,
        "restore_ready_s": finite_or_none(median([r["full"]["ready_s"] for r in rounds])),
        "fresh_ready_s": finite_or_none(median([r["empty"]["ready_s"] for r in rounds])),
        "ratio_restore_vs_fresh": finite_or_none(
            median([ratio(r["full"]["ready_s"], r["empty"]["ready_s"]) for r in rounds])
        ),
        # Growth per key means nothing if the keys were not actually restored.
        "worker_rss_bytes_per_key": finite_or_none(median(rss_growth)) if recognised else None,
    }


# ---- profile ---------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def top_own_time(raw_profile: str, top: int = 10) -> dict[str, Any]:
    """Top functions by own (leaf) samples from py-spy's `--format raw` collapsed stacks.

    Samples whose leaf is the selector's `select` are the event loops waiting for I/O (py-spy
    does not always see that as idle here); they are counted apart and left out of the shares.
    """
    own: Counter[str] = Counter()
    total = 0
    waiting = 0
    for line in raw_profile.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.rsplit(";", 1)[-1]
        # "function (path/to/file.py:123)" -> "function (to/file.py)": aggregate over lines.
        name, _, where = leaf.partition(" (")
        path = where.rstrip(")").rsplit(":", 1)[0]
        if path.endswith("selectors.py") and name.endswith("select"):
            waiting += count
            continue
        total += count
        short = "/".join(Path(path).parts[-2:]) if path else "?"
        own[f"{name} ({short})"] += count
    return {
        "samples": total,
        "waiting_samples": waiting,
        "top": [
            {"function": name, "samples": count, "share": count / total if total else 0.0}
            for name, count in own.most_common(top)
        ],
    }


def profile_worker(ctx: Context, pre: Prefilled, seconds: float) -> dict[str, Any]:
    """Sample one worker with py-spy while it consumes the topic (an extra, unmeasured run)."""
    spy = py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy into the venv)"}
    app_id = f"bench-profile-{uuid.uuid4().hex[:8]}"
    _fresh_group(ctx, pre, app_id)
    process = start_cfn(ctx, pre, app_id)
    out = ctx.tmp / "worker-profile.txt"
    try:
        asyncio.run(
            watch(
                ctx.bootstrap,
                app_id,
                pre.raw_topic,
                [process],
                done=lambda s: s.processed > 0,
                timeout=180,
            )
        )
        assert process.proc is not None
        result = subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(process.proc.pid),
                "--rate",
                "100",
                "--duration",
                str(max(1, round(seconds))),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 60,
        )
    finally:
        _stop([process])
    if result.returncode != 0 or not out.exists():
        return {"skipped": f"py-spy failed: {(result.stderr or result.stdout).strip()[-500:]}"}
    summary = top_own_time(out.read_text())
    summary["seconds"] = seconds
    return summary


# ---- the section -----------------------------------------------------------------------------


def run_pipeline(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    pre = prefill(ctx, sizes.pipeline_n)
    token = uuid.uuid4().hex[:6]
    rounds: list[dict[str, Any]] = []
    for r in range(sizes.runs):
        order = ["bare", "one", "two", "quix"]
        order = order[r % 4 :] + order[: r % 4]  # rotate: no contender always goes first
        round_result: dict[str, Any] = {}
        for which in order:
            app_id = f"bench-{which}-{token}-{r}"
            progress(f"pipeline: run {r + 1}/{sizes.runs}: {which} over {pre.n} records")
            runner = {"bare": run_bare, "one": run_one, "two": run_two, "quix": run_quix}[which]
            try:
                round_result[which] = runner(ctx, pre, app_id)
            except WorkerCrashed as exc:  # a finding about cfn, not a harness failure
                round_result[which] = {"error": str(exc), "log_tail": exc.log_tail}
            progress(f"pipeline:   {which}: {_brief(round_result[which])}")
        rounds.append(round_result)

    def values(which: str, key: str) -> list[float]:
        return [float(r[which][key]) for r in rounds if r[which].get(key) is not None]

    def per_round(a: tuple[str, str], b: tuple[str, str]) -> list[float]:
        out = []
        for r in rounds:
            x, y = r[a[0]].get(a[1]), r[b[0]].get(b[1])
            if x is not None and y is not None:
                out.append(ratio(float(x), float(y)))
        return out

    result: dict[str, Any] = {
        "n": pre.n,
        "box_s": sizes.pipeline_box_s,
        "partitions": PARTITIONS,
        "unique_events": pre.unique_events,
        "incidents": pre.incidents,
        "runs": rounds,
        "cfn_one_eps": finite_or_none(median(values("one", "eps"))),
        "bare_eps": finite_or_none(median(values("bare", "eps"))),
        "cfn_one_eps_per_cpu_s": finite_or_none(median(values("one", "eps_per_cpu_s"))),
        "bare_eps_per_cpu_s": finite_or_none(median(values("bare", "eps_per_cpu_s"))),
        "cfn_one_committed_eps": finite_or_none(median(values("one", "committed_eps"))),
        "cfn_two_committed_eps": finite_or_none(median(values("two", "committed_eps"))),
        "ratio_cfn_vs_bare": finite_or_none(median(per_round(("one", "eps"), ("bare", "eps")))),
        "ratio_cfn_vs_bare_per_cpu": finite_or_none(
            median(per_round(("one", "eps_per_cpu_s"), ("bare", "eps_per_cpu_s")))
        ),
        "ratio_two_vs_one": finite_or_none(
            median(per_round(("two", "committed_eps"), ("one", "committed_eps")))
        ),
        "ratio_two_vs_one_per_cpu": finite_or_none(
            median(per_round(("two", "committed_per_cpu_s"), ("one", "committed_per_cpu_s")))
        ),
        "quix_committed_eps": finite_or_none(median(values("quix", "committed_eps"))),
        "quix_version": QUIX_VERSION,
        "ratio_cfn_vs_quix_committed": finite_or_none(
            median(per_round(("one", "committed_eps"), ("quix", "committed_eps")))
        ),
    }
    if sizes.restore_runs:
        progress(f"pipeline: restore with {sizes.restore_keys} dedup ids")
        empties = [
            {"ready_s": r["one"]["ready_s"], "rss": r["one"]["rss_at_ready"]}
            for r in rounds
            if r["one"].get("ready_s") and r["one"].get("rss_at_ready")
        ]
        result["restore"] = measure_restore(ctx, pre, empties)
    else:
        result["restore"] = {
            "skipped": "not measured in --quick mode (about 30 s); the full run does"
        }
    progress(f"pipeline: profiling one worker with py-spy for {sizes.profile_seconds:.0f}s")
    result["profile"] = profile_worker(ctx, pre, sizes.profile_seconds)
    return result


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    parts = []
    for key in ("eps", "eps_per_cpu_s", "committed_eps"):
        value = result.get(key)
        if value is not None:
            parts.append(f"{key}={value:.1f}")
    return " ".join(parts) or "no figure"
