"""Fault injection (`make test-faults`): broker loss, worker crash, hostile input, the OpenAPI
contract, slow clients and oversized headers, and a flood through the pure logic.

Every test ends with a block of `FIGURE <test>.<name>: <value>` lines (visible with `-s`), the
numbers docs/reliability.md quotes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import re
import resource
import select
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfn.processors.correlate import Correlator
from cfn.processors.dedup import Deduplicator
from cfn.processors.incident import Incident
from cfn.schemas import jsonio
from cfn.schemas.payload import TS_MAX, TS_MIN, Notification, Rejected, parse
from cfn.shell.broker import BrokerError, LocalKafka
from tests.conftest import free_port_block
from tests.kafka_util import committed_reader, create_topics, drain, produce_with_headers, run
from tests.payloads import alert, encode, seed_examples
from tests.records_check import checked, raw_check
from tests.services import Process, request, start_ingest, start_worker
from tests.test_exactly_once import (
    FAST_FAILOVER,
    PARTITIONS,
    assert_exactly_once,
    feed_until_processed,
)
from tests.workload import build

pytestmark = pytest.mark.faults

SECRET = "faults-s3cr3t-never-logged"
AUTH = {"cf-webhook-auth": SECRET, "content-type": "application/json"}
WEBHOOK = "/webhooks/cloudflare"
REJECT_REASONS = {"invalid_json", "not_an_object", "bad_ts", "bad_field"}


# ---- shared helpers ---------------------------------------------------------------------------


def report(test: str, figures: Iterable[tuple[str, object]]) -> str:
    """Print the figures of one test as `FIGURE test.name: value` lines; returns the block so
    assertion messages can carry the same numbers."""
    block = "\n".join(f"FIGURE {test}.{name}: {value}" for name, value in figures)
    print(f"\n--- figures: {test} ---\n{block}", flush=True)
    return block


def event_id(body: bytes) -> str:
    """The event id the worker must emit for a body (it depends on tenant and body only)."""
    parsed = parse(body, "default", int(time.time() * 1000))
    assert isinstance(parsed, Notification), parsed
    return parsed.event_id


def peak_rss_mb() -> float:
    """Peak resident set size of this (pytest) process so far, in MiB (ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1024 * 1024)


async def _await_ids(
    bootstrap: str, topic: str, want: set[str], timeout: float
) -> tuple[float | None, Counter[str]]:
    """Read `topic` (committed records) from the start with one consumer until every id in
    `want` has arrived; returns (monotonic time of the last arrival or None, all ids seen)."""
    consumer = committed_reader(bootstrap, topic)
    await consumer.start()
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    seen[jsonio.loads(record.value)["event_id"]] += 1
            if want <= seen.keys():
                return time.monotonic(), seen
    finally:
        await consumer.stop()
    return None, seen


def read_committed(bootstrap: str, topic: str, role: str) -> list[dict[str, Any]]:
    """Every committed record of a cfn output topic, validated against its JSON Schema."""
    return checked(role, [r.value for r in run(drain(bootstrap, topic, settle=3.0, timeout=180))])


def metric_lines(port: int, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in request(port, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(name):
            sample, value = line.rsplit(" ", 1)
            out[sample] = float(value)
    return out


# ---- 1. broker loss -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One request of the load and what became of it (status 0: no HTTP answer at all)."""

    index: int
    body: bytes
    sent: float
    done: float
    status: int
    retry_after: str | None
    request_id: str | None
    error: str | None


def load_bodies(n: int, token: str, lag: int) -> tuple[list[bytes], dict[str, tuple[int, int]]]:
    """n distinct bodies: a third STARTs, a third one-offs, a third ENDs of the START sent
    `3 * lag` requests earlier. Returns the bodies and {correlation id: (START, END) index}."""
    now = int(time.time())
    bodies: list[bytes] = []
    pairs: dict[str, tuple[int, int]] = {}
    starts: dict[int, tuple[str, int]] = {}
    for i in range(n):
        kind, k = i % 3, i // 3
        if kind == 0:
            corr = f"bl-{token}-{k}"
            ts = now - 600 + k % 300
            starts[k] = (corr, i)
            bodies.append(encode(alert(account=f"acc-{k % 50}", correlation=corr, ts=ts)))
        elif kind == 2 and k - lag in starts:
            corr, start_index = starts[k - lag]
            ts = now - 600 + (k - lag) % 300 + 30 + k % 120
            body = alert(
                account=f"acc-{(k - lag) % 50}",
                correlation=corr,
                event="ALERT_STATE_EVENT_END",
                ts=ts,
            )
            bodies.append(encode(body))
            pairs[corr] = (start_index, i)
        else:
            body = alert(
                account=f"acc-{k % 50}",
                correlation=None,
                event=None,
                alert_type="workers_alert",
                text=f"one-off {token} {i}",
                ts=now - k % 600,
            )
            bodies.append(encode(body))
    assert len(set(bodies)) == n
    return bodies, pairs


def post_one(port: int, index: int, body: bytes) -> Answer:
    sent = time.monotonic()
    try:
        resp = request(port, "POST", WEBHOOK, body, AUTH, timeout=15.0)
    except OSError as exc:
        return Answer(index, body, sent, time.monotonic(), 0, None, None, type(exc).__name__)
    request_id = resp.json().get("id") if resp.status == 202 else None
    retry_after = resp.headers.get("retry-after")
    return Answer(index, body, sent, time.monotonic(), resp.status, retry_after, request_id, None)


def run_load(
    port: int,
    bodies: list[bytes],
    rate: float,
    at: dict[int, Callable[[], None]],
    until: Callable[[], bool] | None = None,
) -> list[Answer]:
    """Post the bodies at a steady `rate` from a thread pool large enough that slow answers
    (up to the ack timeout) do not slow the offered load; `at[i]` runs when request i is sent,
    on one thread beside the load, after any earlier action has finished (a rolling restart
    restarts the next node only once the last one is back, however long that took). Stops
    early once `until()` is true. Returns once every answer is in and every action has run."""
    actions: queue.Queue[Callable[[], None] | None] = queue.Queue()

    def act() -> None:
        while (action := actions.get()) is not None:
            action()

    actor = threading.Thread(target=act, daemon=True)
    actor.start()
    try:
        with ThreadPoolExecutor(max_workers=256) as pool:
            start = time.monotonic()
            futures = []
            for i, body in enumerate(bodies):
                if until is not None and until():
                    break
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(post_one, port, i, body))
                action = at.get(i)
                if action is not None:
                    actions.put(action)
            return [f.result() for f in futures]
    finally:
        actions.put(None)
        actor.join(timeout=300)


def longest_gap(times: list[float], start: float, end: float) -> float:
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


async def _topic_settings(bootstrap: str, topic: str) -> tuple[int, str]:
    """(replication factor, min.insync.replicas) of a topic as the cluster reports them."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        replicas = len(described[0]["partitions"][0]["replicas"])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = configs[0].resources[0][4]
        isr = next(str(e[1]) for e in entries if e[0] == "min.insync.replicas")
    finally:
        await admin.close()
    return replicas, isr


@pytest.mark.broker
def test_broker_loss_keeps_every_202_exactly_once(tmp_path: Path) -> None:
    rate, seconds, kill_after = 60.0, 50.0, 20.0
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"bl{token}.", f"bl-{token}"
    cluster = LocalKafka(tmp_path / "kafka3", port=free_port_block(3), nodes=3, heap="384m")
    try:
        cluster.start(timeout=150)
    except BrokerError as exc:
        cluster.stop()
        pytest.fail(f"the 3-node cluster could not start: {exc}", pytrace=False)
    ingest: Process | None = None
    worker: Process | None = None
    try:
        replicated = {"CFN_REPLICATION": "3", "CFN_PARTITIONS": "6"}
        ingest = start_ingest(
            tmp_path, cluster.bootstrap, prefix, {"CFN_INGEST_SECRET": SECRET, **replicated}
        )
        worker = start_worker(
            tmp_path,
            cluster.bootstrap,
            prefix,
            app_id,
            {**replicated, **FAST_FAILOVER},
            partitions=6,
        )
        rf, min_isr = run(_topic_settings(cluster.bootstrap, f"{prefix}raw"))
        assert (rf, min_isr) == (3, "2"), (rf, min_isr)
        events_rf, events_isr = run(_topic_settings(cluster.bootstrap, f"{prefix}events"))
        assert (events_rf, events_isr) == (3, "2"), (events_rf, events_isr)

        n = int(rate * seconds)
        bodies, pairs = load_bodies(n, token, lag=40)
        killed: list[float] = []

        def kill_node_2() -> None:
            killed.append(time.monotonic())
            cluster.stop_node(2, kill=True)

        load_started = time.monotonic()
        answers = run_load(ingest.port, bodies, rate, {int(rate * kill_after): kill_node_2})
        load_ended = time.monotonic()
        kafka_errors = metric_lines(ingest.admin_port, "cfn_ingest_kafka_errors_total")

        accepted = [a for a in answers if a.status == 202]
        codes = Counter(a.status for a in answers)
        expected = {event_id(a.body) for a in accepted}
        arrived_at, _ = run(_await_ids(cluster.bootstrap, f"{prefix}events", expected, 240))
        worker_alive = worker.proc is not None and worker.proc.poll() is None
        events = read_committed(cluster.bootstrap, f"{prefix}events", "events")
        incidents = read_committed(cluster.bootstrap, f"{prefix}incidents", "incidents")
        raw = run(drain(cluster.bootstrap, f"{prefix}raw", settle=3.0, timeout=120))
    finally:
        for process in (worker, ingest):
            if process is not None:
                process.stop(timeout=10)
        cluster.stop()

    kill_time = killed[0]
    in_raw = raw_check(
        [(a.request_id or "", a.body) for a in accepted],
        [(dict(r.headers)["cfn-request-id"].decode(), r.value) for r in raw],
    )
    raw_bodies = Counter(record.value for record in raw)
    not_accepted_but_written = [a for a in answers if a.status != 202 and raw_bodies[a.body]]
    event_counts = Counter(e["event_id"] for e in events)
    missing_events = expected - set(event_counts)
    duplicated_events = [i for i, c in event_counts.items() if c > 1]
    versions = Counter((i["incident_id"], i["version"]) for i in incidents)
    duplicated_versions = [v for v, c in versions.items() if c > 1]
    resolved = {i["correlation_id"] for i in incidents if i["state"] == "resolved"}
    both_accepted = [
        corr
        for corr, (s, e) in pairs.items()
        if answers[s].status == 202 and answers[e].status == 202
    ]
    unresolved = [corr for corr in both_accepted if corr not in resolved]
    bad_errors = [
        a for a in answers if a.status != 202 and (a.status != 503 or a.retry_after is None)
    ]
    after_kill = [a for a in accepted if a.done > kill_time]
    gap = longest_gap([a.done for a in accepted], load_started, load_ended)
    slowest = max(a.done - a.sent for a in answers)
    figures = report(
        "broker_loss",
        [
            ("cluster", "3 KRaft nodes, RF=3, min.insync.replicas=2, 6 partitions"),
            ("offered_rate_per_s", f"{rate:.0f}"),
            ("load_duration_s", f"{load_ended - load_started:.1f}"),
            ("killed", f"node 2 (SIGKILL) at t+{kill_time - load_started:.1f}s"),
            ("requests_sent", len(answers)),
            ("answers_202", codes[202]),
            ("answers_503", codes[503]),
            ("answers_other", {c: k for c, k in codes.items() if c not in (202, 503)}),
            (
                "answers_503_without_retry_after",
                sum(a.retry_after is None for a in answers if a.status == 503),
            ),
            ("longest_gap_without_202_s", f"{gap:.1f}"),
            ("slowest_answer_s", f"{slowest:.2f}"),
            ("answers_202_after_kill", len(after_kill)),
            (
                "kafka_errors",
                {k.split("{", 1)[-1].rstrip("}"): v for k, v in kafka_errors.items() if v},
            ),
            ("accepted_missing_from_raw", len(in_raw.missing)),
            ("accepted_altered_in_raw", len(in_raw.altered)),
            ("accepted_twice_in_raw", len(in_raw.repeated)),
            ("raw_records", len(raw)),
            ("raw_duplicate_bodies", sum(c - 1 for c in raw_bodies.values() if c > 1)),
            ("non_202_whose_bytes_reached_raw", len(not_accepted_but_written)),
            ("unique_events_expected", len(expected)),
            ("events_in_topic", len(events)),
            ("accepted_events_missing", len(missing_events)),
            ("duplicate_event_ids", len(duplicated_events)),
            ("incident_versions", len(incidents)),
            ("duplicate_incident_versions", len(duplicated_versions)),
            ("pairs_both_accepted", len(both_accepted)),
            ("pairs_both_accepted_not_resolved", len(unresolved)),
            ("worker_alive_after_loss", worker_alive),
            (
                "last_accepted_event_visible_after_load_s",
                "never" if arrived_at is None else f"{max(0.0, arrived_at - load_ended):.1f}",
            ),
        ],
    )
    assert not bad_errors, f"answers other than 202 or 503+Retry-After\n{figures}"
    assert not in_raw.missing, f"202 answers whose exact bytes are not in cfn.raw\n{figures}"
    assert not in_raw.altered, f"202 answers with other bytes in cfn.raw\n{figures}"
    assert not missing_events, f"accepted notifications lost downstream\n{figures}"
    assert not duplicated_events, f"event_ids emitted more than once\n{figures}"
    assert not duplicated_versions, f"duplicate (incident_id, version)\n{figures}"
    assert not unresolved, f"START and END both accepted but no resolved incident\n{figures}"
    assert worker_alive, f"the worker died when a broker was lost\n{figures}"
    # The two remaining brokers keep taking writes: ingest recovered without a restart.
    assert len(after_kill) > rate * 5, f"ingest did not recover after the broker loss\n{figures}"
    assert max(a.done for a in accepted) > load_ended - 5, f"no 202 near the end\n{figures}"


# ---- 2. worker crash ----------------------------------------------------------------------------


@pytest.mark.broker
def test_worker_sigkill_recovery_time(kafka: str, tmp_path: Path) -> None:
    """tests/test_exactly_once.py's SIGKILL test, timed: restart -> ready -> all events."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"wc{token}.", f"wc-{token}"
    work = build(n_incidents=1000, n_one_offs=1000, now_ms=int(time.time() * 1000), seed=23)
    run(create_topics(kafka, [f"{prefix}raw"], PARTITIONS))

    worker = start_worker(tmp_path, kafka, prefix, app_id, FAST_FAILOVER, partitions=PARTITIONS)
    sent, done_before_kill = feed_until_processed(
        kafka, f"{prefix}raw", work.records, worker, len(work.records) // 5
    )
    worker.kill()
    sent += run(produce_with_headers(kafka, f"{prefix}raw", work.records[sent:]))
    assert sent == len(work.records)

    restarted = time.monotonic()
    again = start_worker(tmp_path, kafka, prefix, app_id, FAST_FAILOVER, partitions=PARTITIONS)
    try:
        ready = time.monotonic()
        complete, _ = run(_await_ids(kafka, f"{prefix}events", work.unique_event_ids, 240))
        incidents_expected = 2 * work.pairs
        deadline = time.monotonic() + 60
        incidents = read_committed(kafka, f"{prefix}incidents", "incidents")
        while len(incidents) < incidents_expected and time.monotonic() < deadline:
            time.sleep(1.0)
            incidents = read_committed(kafka, f"{prefix}incidents", "incidents")
        events = read_committed(kafka, f"{prefix}events", "events")
    finally:
        again.stop()
    ids = Counter(e["event_id"] for e in events)
    report(
        "worker_crash",
        [
            ("raw_records", len(work.records)),
            ("unique_events", len(work.unique_event_ids)),
            ("start_end_pairs", work.pairs),
            ("processed_before_sigkill", done_before_kill),
            ("restart_to_ready_s", f"{ready - restarted:.1f}"),
            (
                "restart_to_all_events_s",
                "never" if complete is None else f"{complete - restarted:.1f}",
            ),
            ("events_in_topic", len(events)),
            ("duplicate_event_ids", sum(1 for c in ids.values() if c > 1)),
            ("lost_events", len(work.unique_event_ids - set(ids))),
            ("incident_versions", len(incidents)),
        ],
    )
    assert complete is not None, "not every unique event arrived after the restart"
    assert_exactly_once(events, incidents, work.unique_event_ids, work.pairs)


# ---- 3. hostile input ---------------------------------------------------------------------------

BYTES_EXAMPLES, JSON_EXAMPLES, ENVELOPE_EXAMPLES = 4_500, 2_500, 3_000
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(ANY_CHAR, max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(ANY_CHAR, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Envelope fields: mostly scalars (cheap to generate), sometimes a shallow container.
SHALLOW = (
    JSON_LEAVES
    | st.lists(JSON_LEAVES, max_size=3)
    | st.dictionaries(st.text(max_size=8), JSON_LEAVES, max_size=3)
)
ENVELOPE_FIELDS = (
    "name",
    "text",
    "account_id",
    "policy_id",
    "policy_name",
    "alert_type",
    "alert_correlation_id",
    "alert_event",
    "ts",
    "data",
)
TS_VALUES = (
    SHALLOW
    | st.integers(min_value=TS_MIN - 10, max_value=TS_MAX * 1000 + 10)
    | st.integers(min_value=TS_MIN, max_value=TS_MAX).map(str)
    | st.floats(min_value=TS_MIN, max_value=TS_MAX * 1000.0)
    | st.sampled_from(["", " 1700000000 ", "1e9", "nan", "inf", "-inf", "0x10", "yesterday"])
)
KNOWN_VALUES = ["ALERT_STATE_EVENT_START", "ALERT_STATE_EVENT_END", "dos_attack_l7"]
FIELD_VALUES = SHALLOW | st.text(max_size=50) | st.sampled_from(KNOWN_VALUES)


def _encode_loosely(value: Any, ensure_ascii: bool) -> bytes:
    """JSON as a sloppy sender might write it: NaN/Infinity tokens, huge integers, lone
    surrogates (escaped, or as invalid UTF-8 bytes)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True).encode(
        "utf-8", errors="surrogatepass"
    )


def _mutate(body: bytes, at: int, junk: bytes, cut: bool) -> bytes:
    at = min(at, len(body))
    return body[:at] + junk if cut else body[:at] + junk + body[at:]


HOSTILE_BYTES = (
    st.binary(max_size=3000)
    | st.builds(
        _mutate,
        st.sampled_from(seed_examples()),
        st.integers(0, 2000),
        st.binary(max_size=8),
        st.booleans(),
    )
    | st.integers(200, 1500).map(lambda d: b'{"data":' + b"[" * d + b"]" * d + b"}")
    | st.integers(200, 1500).map(lambda d: b'{"data":' + b'{"a":' * d + b"1" + b"}" * d + b"}")
)


def _merge(fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, **fields}


ENVELOPE_BODIES = st.builds(
    _merge,
    st.fixed_dictionaries(
        {},
        optional={
            f: TS_VALUES if f == "ts" else JSON_VALUES if f == "data" else FIELD_VALUES
            for f in ENVELOPE_FIELDS
        },
    ),
    st.dictionaries(st.text(ANY_CHAR, max_size=12), JSON_LEAVES, max_size=2),
)


def test_hostile_input_never_escapes_parse() -> None:
    outcomes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    now_ms = int(time.time() * 1000)

    def check(raw: bytes, kind: str) -> None:
        counts[kind] += 1
        result = parse(raw, "default", now_ms)
        if isinstance(result, Rejected):
            assert result.reason in REJECT_REASONS, result
            assert result.detail, result
            outcomes[result.reason] += 1
            return
        assert isinstance(result, Notification), result
        assert re.fullmatch(r"ev_[0-9a-f]{32}", result.event_id), result.event_id
        assert result.kind in ("alert", "test")
        assert TS_MIN <= result.ts < TS_MAX
        later = parse(raw, "default", now_ms + 86_400_000)
        assert isinstance(later, Notification) and later.event_id == result.event_id
        outcomes["notification"] += 1

    common = settings(
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    @settings(common, max_examples=BYTES_EXAMPLES)
    @given(raw=HOSTILE_BYTES)
    def arbitrary_bytes(raw: bytes) -> None:
        check(raw, "bytes")

    @settings(common, max_examples=JSON_EXAMPLES)
    @given(value=JSON_VALUES, ensure_ascii=st.booleans())
    def arbitrary_json(value: Any, ensure_ascii: bool) -> None:
        check(_encode_loosely(value, ensure_ascii), "json")

    @settings(common, max_examples=ENVELOPE_EXAMPLES)
    @given(body=ENVELOPE_BODIES, ensure_ascii=st.booleans(), strict=st.booleans())
    def envelopes(body: dict[str, Any], ensure_ascii: bool, strict: bool) -> None:
        if strict:  # the way a well-behaved sender (and jsonio) writes JSON, when it can
            try:
                raw = encode(body)
            except (TypeError, ValueError):  # orjson: >64-bit ints, lone surrogates
                raw = _encode_loosely(body, ensure_ascii)
        else:
            raw = _encode_loosely(body, ensure_ascii)
        check(raw, "envelope")

    started = time.monotonic()
    arbitrary_bytes()
    arbitrary_json()
    envelopes()
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    report(
        "hostile_input",
        [
            ("bodies", total),
            ("by_strategy", dict(counts)),
            ("outcomes", dict(sorted(outcomes.items()))),
            ("exceptions_escaped", 0),
            ("duration_s", f"{elapsed:.1f}"),
        ],
    )
    assert total >= 10_000, counts
    assert outcomes["notification"] > 500, outcomes  # the envelopes reach the deep paths


# ---- 4. the OpenAPI contract (schemathesis) ----------------------------------------------------


@dataclasses.dataclass
class ContractLog:
    statuses: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)
    undocumented: list[str] = dataclasses.field(default_factory=list)
    server_errors: list[str] = dataclasses.field(default_factory=list)
    with_secret: int = 0


def exercise(
    operation: Any,
    mode: Any,
    base: str,
    checks: list[Any],
    log: ContractLog,
    headers: dict[str, str] | None = None,
) -> None:
    """Up to 50 schemathesis cases for one operation in one generation mode (`headers`: fixed
    header values, so that negative cases mutate only the rest)."""
    label = f"{operation.method.upper()} {operation.path}"
    documented = {int(code) for code in operation.definition.raw["responses"]}
    strategy = operation.as_strategy(generation_mode=mode, headers=headers)

    @settings(
        max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy, key=st.integers(0, 3))
    def call(case: Any, key: int) -> None:
        # The real secret on most cases, so the 202 and 400 paths are reached too (schemathesis
        # would never guess it); the rest keep the generated value (401). A negative case that
        # drops the required header keeps it dropped whatever is passed here.
        override = {"cf-webhook-auth": SECRET} if key > 0 else None
        log.with_secret += override is not None or headers is not None
        response = case.call(base_url=base, headers=override, timeout=10)
        code = response.status_code
        log.statuses[(label, code)] += 1
        if code not in documented:
            log.undocumented.append(f"{label} -> {code}")
        # With a healthy broker there is no 5xx at all: not even /readyz's documented 503.
        if code >= 500:
            log.server_errors.append(f"{label} -> {code}: {response.content[:200]!r}")
        case.validate_response(response, checks=checks)

    call()


@pytest.mark.broker
def test_openapi_contract_with_schemathesis(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    import schemathesis
    from schemathesis import checks as st_checks

    ingest = start_ingest(tmp_path, kafka, unique("oa") + ".", {"CFN_INGEST_SECRET": SECRET})
    public = f"http://127.0.0.1:{ingest.port}"
    admin = f"http://127.0.0.1:{ingest.admin_port}"
    log = ContractLog()
    started = time.monotonic()
    try:
        schema = schemathesis.openapi.from_url(f"{admin}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        contract = [
            st_checks.status_code_conformance,
            st_checks.content_type_conformance,
            st_checks.response_headers_conformance,
            st_checks.response_schema_conformance,
        ]
        positive = schemathesis.GenerationMode.POSITIVE
        negative = schemathesis.GenerationMode.NEGATIVE
        for operation in operations:
            # Each path where the document says it is served (the admin paths name a server).
            base = admin if operation.path in ("/readyz", "/metrics", "/openapi.json") else public
            exercise(operation, positive, base, contract, log)
            if operation.method.upper() == "POST":
                # Negative cases either drop the required header (401) or, with the secret
                # fixed, break the body: not an object -> 400. A body that is an object but
                # breaks the documented field types still gets 202 (ingest keeps any JSON object
                # on purpose), so schemathesis's negative_data_rejection check is not used.
                exercise(operation, negative, base, contract, log)
                exercise(operation, negative, base, contract, log, {"cf-webhook-auth": SECRET})
    finally:
        ingest.stop()
    assert SECRET not in ingest.output
    by_status: Counter[int] = Counter()
    for (_, code), n in log.statuses.items():
        by_status[code] += n
    report(
        "openapi_contract",
        [
            ("operations", len(operations)),
            ("cases", sum(log.statuses.values())),
            ("cases_with_secret", log.with_secret),
            ("by_status", dict(sorted(by_status.items()))),
            (
                "webhook_post_by_status",
                {
                    c: n
                    for (label, c), n in sorted(log.statuses.items())
                    if label.startswith("POST")
                },
            ),
            ("server_errors", len(log.server_errors)),
            ("undocumented_statuses", len(log.undocumented)),
            ("duration_s", f"{time.monotonic() - started:.1f}"),
        ],
    )
    assert not log.server_errors, log.server_errors[:10]
    assert not log.undocumented, sorted(set(log.undocumented))
    assert by_status[202] > 0 and by_status[400] > 0 and by_status[401] > 0, by_status


# ---- 5. slow clients and oversized headers -------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SlowOutcome:
    status: int | None  # None: the server closed without an answer, or never answered
    closed: bool
    seconds: float  # from the end of the headers to the answer or the close
    bytes_sent: int


def _status_of(data: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else None


def slow_client(port: int, give_up: float, length: int = 120) -> SlowOutcome:
    """Send complete headers with a Content-Length, then the body one byte per second."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = (
            f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\ncf-webhook-auth: {SECRET}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        sock.sendall(head)
        started = time.monotonic()
        sent, received = 0, b""
        while time.monotonic() - started < give_up:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    status = _status_of(received)
                    return SlowOutcome(status, True, time.monotonic() - started, sent)
                received += chunk
                if b"\r\n\r\n" in received:
                    return SlowOutcome(
                        _status_of(received), False, time.monotonic() - started, sent
                    )
                continue
            try:
                sock.sendall(b"{" if sent == 0 else b" ")
                sent += 1
            except OSError:
                return SlowOutcome(_status_of(received), True, time.monotonic() - started, sent)
        return SlowOutcome(None, False, time.monotonic() - started, sent)


def huge_header(port: int, size: int) -> tuple[int | None, bool]:
    """POST with one header value of `size` bytes; returns (status or None, connection closed)."""
    body = encode(alert(correlation=f"huge-{uuid.uuid4().hex}"))
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\ncf-webhook-auth: {SECRET}\r\n"
        f"x-padding: {'a' * size}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head + body)
        except OSError:
            return None, True
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    return _status_of(received), True
                received += chunk
        except OSError:
            return _status_of(received), True
        return _status_of(received), False


HUGE_HEADER = 200 * 1024


@pytest.mark.broker
def test_slow_loris_gets_408_and_other_clients_stay_fast(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    body_timeout, attackers, attack_s = 2.0, 20, 8.0
    ingest = start_ingest(
        tmp_path,
        kafka,
        unique("sl") + ".",
        {"CFN_INGEST_SECRET": SECRET, "CFN_INGEST_BODY_TIMEOUT": f"{body_timeout:g}s"},
    )
    slow: list[SlowOutcome] = []
    normal: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + attack_s

    def attacker() -> None:
        # Reconnects after every answer, so ~20 slots stay occupied for the whole window.
        while time.monotonic() < stop_at:
            outcome = slow_client(ingest.port, give_up=body_timeout + 8)
            with lock:
                slow.append(outcome)

    def timed_post(body: bytes) -> tuple[int, float]:
        started = time.monotonic()
        status = request(ingest.port, "POST", WEBHOOK, body, AUTH, timeout=10).status
        return status, time.monotonic() - started

    try:
        threads = [threading.Thread(target=attacker, daemon=True) for _ in range(attackers)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        i = 0
        while time.monotonic() < stop_at:
            normal.append(timed_post(encode(alert(correlation=f"normal-{i}-{uuid.uuid4().hex}"))))
            i += 1
            time.sleep(0.1)
        for thread in threads:
            thread.join(timeout=body_timeout + 15)
        # An oversized header must not hurt anyone else, whatever the answer to it is (whether
        # it is refused at all is test_oversized_header_is_refused).
        huge_status, huge_closed = huge_header(ingest.port, HUGE_HEADER)
        after_huge = timed_post(encode(alert(correlation=f"after-huge-{uuid.uuid4().hex}")))
        alive = ingest.proc is not None and ingest.proc.poll() is None
        timeouts = metric_lines(ingest.admin_port, 'cfn_ingest_requests_total{code="408"}')
    finally:
        ingest.stop()
    latencies = sorted(s for _, s in normal)
    slow_codes = Counter("closed" if o.status is None else o.status for o in slow)
    figures = report(
        "slow_loris",
        [
            ("body_timeout_s", f"{body_timeout:g}"),
            ("slow_connections", f"{len(slow)} over {attack_s:g}s from {attackers} attackers"),
            ("slow_outcomes", dict(slow_codes)),
            ("slow_answer_max_s", f"{max(o.seconds for o in slow):.2f}"),
            ("normal_requests", len(normal)),
            ("normal_statuses", dict(Counter(s for s, _ in normal))),
            ("normal_latency_p50_s", f"{latencies[len(latencies) // 2]:.3f}"),
            ("normal_latency_max_s", f"{latencies[-1]:.3f}"),
            ("ingest_408_count", int(sum(timeouts.values()))),
            ("huge_header_bytes", HUGE_HEADER),
            ("huge_header_answer", f"{huge_status} (closed={huge_closed})"),
            ("next_request_after_huge_header", f"{after_huge[0]} in {after_huge[1]:.3f}s"),
        ],
    )
    assert all(status == 202 for status, _ in normal), figures
    assert latencies[-1] < 1.0, figures
    for outcome in slow:
        assert outcome.status == 408 or (outcome.status is None and outcome.closed), outcome
        assert outcome.seconds < body_timeout + 2.0, outcome
    assert len(slow) >= attackers * 2, figures  # each attacker was answered and came back
    assert alive, figures
    assert after_huge[0] == 202 and after_huge[1] < 1.0, figures


def _head(length: int, secret: str) -> bytes:
    return (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\ncf-webhook-auth: {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_for(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends within `seconds` or until it closes."""
    received = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received


@pytest.mark.broker
def test_body_timer_times_the_request_being_served_and_never_answers_twice(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    body_timeout = 1.0
    ingest = start_ingest(
        tmp_path,
        kafka,
        unique("bt") + ".",
        {"CFN_INGEST_SECRET": SECRET, "CFN_INGEST_BODY_TIMEOUT": f"{body_timeout:g}s"},
    )
    body = encode(alert(correlation=f"pipelined-{uuid.uuid4().hex}"))
    try:
        # Pipelined: a whole request, then one whose body stops. The first is answered first;
        # the second's time starts when it runs, and it alone gets the 408.
        with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
            sock.sendall(_head(len(body), SECRET) + body + _head(len(body), SECRET) + body[:10])
            pipelined = _read_for(sock, body_timeout + 5)
        # Answered early (wrong secret, body unread) and then silent: one answer only.
        with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
            sock.sendall(_head(len(body), "wrong-secret") + body[:10])
            early = _read_for(sock, body_timeout + 1.5)
    finally:
        ingest.stop()
    assert re.findall(rb"HTTP/1\.1 (\d{3})", pipelined) == [b"202", b"408"], pipelined
    assert re.findall(rb"HTTP/1\.1 (\d{3})", early) == [b"401"], early


@pytest.mark.broker
def test_pipelined_requests_garbage_and_many_small_headers(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """Every request on a connection is answered, in order; bytes that are not HTTP after a
    whole request get their 400 after that request's 202; a head over the limit is refused
    however it is split, before anything is written."""
    prefix = unique("pp") + "."
    limit = 16 * 1024
    ingest = start_ingest(
        tmp_path,
        kafka,
        prefix,
        {"CFN_INGEST_SECRET": SECRET, "CFN_INGEST_MAX_HEADER_BYTES": str(limit)},
    )
    token = uuid.uuid4().hex
    bodies = [encode(alert(correlation=f"pipe-{token}-{i}")) for i in range(4)]
    # ~24 KB of small headers, sent in one write: the whole head arrives in one read, so only
    # the count of parsed headers can refuse it (the received-bytes count is checked while a
    # head is incomplete).
    many = "".join(f"x-h{i}: v\r\n" for i in range(2_000))
    many_body = encode(alert(correlation=f"many-headers-{token}"))
    try:
        with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
            sock.sendall(b"".join(_head(len(b), SECRET) + b for b in bodies[:3]))  # one write
            pipelined = _read_for(sock, 5)
        with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
            sock.sendall(_head(len(bodies[3]), SECRET) + bodies[3] + b"garbage\r\n\r\n")
            garbage = _read_for(sock, 5)
        head = _head(len(many_body), SECRET).replace(
            b"Content-Type", many.encode() + b"Content-Type"
        )
        # A body that stops being HTTP (a broken chunk) while its request is being served: 400
        # at once, not a request left waiting for the rest of its body.
        chunked = (
            f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\ncf-webhook-auth: {SECRET}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
            sock.sendall(chunked)
            started = time.monotonic()
            broken_chunk = _read_for(sock, 5)
            broken_chunk_s = time.monotonic() - started
        assert limit < len(head) < 2 * limit
        with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as sock:
            sock.sendall(head + many_body)
            small_headers = _read_for(sock, 5)
        raw = run(drain(kafka, f"{prefix}raw", settle=2.0, timeout=30))
    finally:
        ingest.stop()
    written = [record.value for record in raw]
    assert re.findall(rb"HTTP/1\.1 (\d{3})", pipelined) == [b"202"] * 3, pipelined
    assert re.findall(rb"HTTP/1\.1 (\d{3})", garbage) == [b"202", b"400"], garbage
    assert b'"error":"bad_request"' in garbage, garbage
    assert re.findall(rb"HTTP/1\.1 (\d{3})", small_headers) == [b"431"], small_headers
    assert re.findall(rb"HTTP/1\.1 (\d{3})", broken_chunk) == [b"400"], broken_chunk
    assert broken_chunk_s < 2.0, broken_chunk_s
    assert sorted(written) == sorted(bodies), "exactly the whole requests were written"


@pytest.mark.broker
def test_oversized_header_is_refused(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    ingest = start_ingest(tmp_path, kafka, unique("hh") + ".", {"CFN_INGEST_SECRET": SECRET})
    try:
        status, closed = huge_header(ingest.port, HUGE_HEADER)
    finally:
        ingest.stop()
    report("oversized_header", [("bytes", HUGE_HEADER), ("answer", f"{status} (closed={closed})")])
    assert status == 431, (status, closed)  # as docs/operations.md promises, then closed


@pytest.mark.broker
def test_unfinished_headers_cannot_lock_out_clients(
    kafka: str, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    """More silent half-open requests than the old connection cap (4 x max in flight): normal
    clients still get 202 at once, and each silent socket gets a 408 at the header timeout."""
    max_inflight, header_timeout, held = 5, 2.0, 200
    ingest = start_ingest(
        tmp_path,
        kafka,
        unique("uh") + ".",
        {
            "CFN_INGEST_SECRET": SECRET,
            "CFN_INGEST_MAX_INFLIGHT": str(max_inflight),
            "CFN_INGEST_HEADER_TIMEOUT": f"{header_timeout:g}s",
        },
    )
    sockets: list[socket.socket] = []
    answers: list[tuple[int, float]] = []
    try:
        for _ in range(held):
            sock = socket.create_connection(("127.0.0.1", ingest.port), timeout=5)
            sock.sendall(f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
            sockets.append(sock)
        for _ in range(10):
            started = time.monotonic()
            resp = request(ingest.port, "POST", WEBHOOK, encode(alert()), AUTH, timeout=10)
            answers.append((resp.status, time.monotonic() - started))
        time.sleep(header_timeout + 1.5)
        timed_out = 0
        for sock in sockets:
            sock.settimeout(2.0)
            received = b""
            try:
                while chunk := sock.recv(4096):
                    received += chunk
            except OSError:
                pass
            timed_out += received.startswith(b"HTTP/1.1 408")
    finally:
        for sock in sockets:
            sock.close()
        ingest.stop()
    report(
        "unfinished_headers",
        [
            ("held_sockets", held),
            ("normal_answers", dict(Counter(status for status, _ in answers))),
            ("normal_slowest_s", f"{max(t for _, t in answers):.3f}"),
            ("held_sockets_answered_408_and_closed", timed_out),
            ("header_timeout_s", f"{header_timeout:g}"),
        ],
    )
    assert [status for status, _ in answers] == [202] * len(answers), answers
    assert timed_out == held


# ---- 6. flood through the pure logic -------------------------------------------------------------


def test_flood_of_distinct_incidents_keeps_state_bounded_by_ttls() -> None:
    """1,000,000 distinct correlation ids through Deduplicator + Correlator over dicts.

    Through Kafka this would be 1.6M raw records and hours of CPU on this 2-core machine, so the
    pure logic (the exact code the agents call) runs with a simulated clock instead. The
    claim: the tables hold what the TTLs say (dedup window, stale timeout, orphan hold, closed
    retention), not everything ever seen, and drain to zero once time passes them.
    """
    n_ids, per_s, partitions = 1_000_000, 100, 4  # 1M ids over 10,000 simulated seconds
    window, stale, hold, retention = 600, 900, 300, 600  # seconds (retention = dedup window)
    end_lag = 60  # an END arrives 60 s after its START
    t0 = 1_700_000_000
    dedup_store: dict[str, list[int]] = {}
    incident_store: dict[str, Incident] = {}
    dedup = Deduplicator(dedup_store, window)
    correlator = Correlator(
        incident_store,
        stale_after=lambda _t: stale,
        orphan_hold_s=hold,
        closed_retention_s=retention,
    )
    template = parse(encode(alert(account="acc-flood", ts=t0)), "default", t0 * 1000)
    assert isinstance(template, Notification)
    rss_before = current_rss_mb()
    outcomes: Counter[str] = Counter()
    duplicates = 0
    peak_dedup = peak_incidents = peak_timers = 0

    def kind_of(k: int) -> str:  # 50% START+END, 30% START only (expires), 20% END only
        r = k % 10
        return "pair" if r < 5 else "start" if r < 8 else "end"

    def deliver(k: int, event: str, now: int) -> None:
        nonlocal duplicates
        n = Notification(  # built directly: dataclasses.replace was a quarter of the time
            f"ev_{k:031x}{0 if event == 'start' else 1}",
            "alert",
            "default",
            template.account_id,
            template.policy_id,
            template.policy_name,
            template.alert_type,
            event,
            f"corr-{k}",
            now,
            now * 1000,
            template.name,
            template.text,
            template.data,
        )
        copies = 2 if event == "start" and k % 10 == 0 else 1  # 10% of STARTs redelivered
        for _ in range(copies):
            if dedup.is_duplicate(n.event_id, now, k % partitions):
                duplicates += 1
                continue
            for record in correlator.on_event(n, k % partitions):
                outcomes[record.state] += 1

    def tick(now: int) -> None:
        for p in range(partitions):
            dedup.expire(now, p)
            for record in correlator.tick(now, p):
                outcomes[record.state] += 1

    started = time.monotonic()
    lag = end_lag * per_s
    second = t0
    for k in range(n_ids + lag):
        now = t0 + k // per_s
        if now != second:  # a new second: sample the fullest moment, then fire the timers
            peak_dedup = max(peak_dedup, len(dedup_store))
            peak_incidents = max(peak_incidents, len(incident_store))
            peak_timers = max(peak_timers, sum(len(h) for h in correlator._timers.values()))
            second = now
            tick(now)
        if k < n_ids and kind_of(k) in ("pair", "start"):
            deliver(k, "start", now)
        if k < n_ids and kind_of(k) == "end":
            deliver(k, "end", now)
        if k >= lag and kind_of(k - lag) == "pair":
            deliver(k - lag, "end", now)
    stream_end = second
    stream_s = time.monotonic() - started
    sizes_at_end = (len(dedup_store), len(incident_store))
    for now in range(stream_end + 1, stream_end + stale + retention + 10):
        tick(now)
    rss_after = current_rss_mb()

    pairs = n_ids // 2
    dedup_bound = int(per_s * 1.5 * (window + 2))  # 1.5 unique events per id
    incident_bound = per_s * (stale + retention + 2)  # the longest life: open, expire, retain
    report(
        "flood",
        [
            ("correlation_ids", n_ids),
            ("simulated_seconds", stream_end - t0),
            ("ttls_s", f"dedup={window} stale={stale} orphan_hold={hold} retention={retention}"),
            ("duplicates_dropped", duplicates),
            ("incident_records", dict(sorted(outcomes.items()))),
            ("peak_dedup_entries", f"{peak_dedup} (bound {dedup_bound})"),
            ("peak_incident_entries", f"{peak_incidents} (bound {incident_bound})"),
            ("peak_timer_heap_entries", peak_timers),
            ("entries_at_stream_end", f"dedup={sizes_at_end[0]} incidents={sizes_at_end[1]}"),
            (
                "entries_after_ttls",
                f"dedup={len(dedup_store)} incidents={len(incident_store)} "
                f"dedup_index={len(dedup)} "
                f"timers={sum(len(h) for h in correlator._timers.values())}",
            ),
            ("rss_mb_before_after", f"{rss_before:.0f} -> {rss_after:.0f}"),
            ("peak_rss_mb_whole_pytest_process", f"{peak_rss_mb():.0f}"),
            ("stream_duration_s", f"{stream_s:.1f}"),
        ],
    )
    assert duplicates == n_ids // 10
    assert outcomes["open"] == pairs + n_ids * 3 // 10
    assert outcomes["resolved"] == pairs
    assert outcomes["expired"] == n_ids * 3 // 10
    assert outcomes["orphan_end"] == n_ids * 2 // 10
    assert peak_dedup <= dedup_bound, (peak_dedup, dedup_bound)
    assert peak_incidents <= incident_bound, (peak_incidents, incident_bound)
    assert peak_dedup < n_ids // 5 and peak_incidents < n_ids // 5
    assert len(dedup_store) == len(incident_store) == len(dedup) == 0
    assert sum(len(h) for h in correlator._timers.values()) == 0


def test_a_worker_whose_kafka_is_gone_stops_within_its_shutdown_timeout(tmp_path: Path) -> None:
    """SIGTERM with every broker gone: a clean stop would wait for Kafka for ever (the last
    commit, leaving the group), so the worker exits CFN_WORKER_SHUTDOWN_TIMEOUT after the
    signal, saying so; a second signal ends it at once."""
    token = uuid.uuid4().hex[:8]
    broker = LocalKafka(tmp_path / "kafka", port=free_port_block(1))
    workers: list[Process] = []
    try:
        broker.start()
        env = {"CFN_WORKER_SHUTDOWN_TIMEOUT": "4s", "CFN_LOG_LEVEL": "INFO"}
        for n in range(2):
            (where := tmp_path / f"w{n}").mkdir()
            workers.append(start_worker(where, broker.bootstrap, f"g{token}.", token, env))
        broker.stop()
        patient, hasty = workers
        assert patient.proc is not None and hasty.proc is not None
        time.sleep(2.0)  # the workers now find Kafka gone
        signalled = time.monotonic()
        patient.signal(signal.SIGTERM)
        hasty.signal(signal.SIGTERM)
        time.sleep(0.5)
        hasty.signal(signal.SIGTERM)
        assert hasty.proc.wait(5) == 1
        hasty_took = time.monotonic() - signalled
        assert patient.proc.wait(15) == 1
        took = time.monotonic() - signalled
    finally:
        for worker in workers:
            worker.kill()
        broker.stop()
    assert "SIGTERM again; exiting now" in hasty.output and hasty_took < 3.0, hasty.output
    assert "not stopped 4s after the signal" in patient.output, patient.output
    assert 4.0 <= took < 8.0, f"stopped {took:.1f}s after SIGTERM"
