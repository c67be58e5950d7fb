"""Broker restarts under load (`make test-faults`): one node stopped and started again three
times and crashed once, a rolling restart of three nodes, and an idle ingest across restarts.

Through each: no 2xx for bytes Kafka does not hold, no 500 for a retriable cause, every answer
within 5 s, a 202 again within 15 s of the broker being back, `/readyz` and `cfn_kafka_up`
telling the truth, no process restarted by hand, and every accepted notification in
`cfn.events` exactly once for a read_committed reader. Each test prints `FIGURE` lines (`-s`)
that docs/reliability.md quotes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from cfn.shell.broker import BrokerError, LocalKafka
from tests.conftest import free_port_block
from tests.kafka_util import read_to_end, run, wait_caught_up
from tests.records_check import checked, raw_check
from tests.services import Process, request, start_ingest, start_worker
from tests.test_exactly_once import FAST_FAILOVER
from tests.test_faults import (
    SECRET,
    Answer,
    event_id,
    load_bodies,
    longest_gap,
    metric_lines,
    post_one,
    report,
    run_load,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker]

ANSWER_BOUND_S = 5.0  # every request is answered within this
BACK_BOUND_S = 15.0  # a 202 again within this of the broker answering metadata again


@dataclasses.dataclass
class Restart:
    """One node restart: when it was stopped, started again, and answering again."""

    node: int
    kill: bool
    begun: float = 0.0
    stopped: float = 0.0
    started: float = 0.0
    back: float = 0.0
    failed: str = ""  # why it did not come back, if it did not


class ReadySampler:
    """Polls an ingest's /readyz in a thread: (monotonic time, status) every 0.25 s."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = request(self.port, "GET", "/readyz", timeout=3).status
            except OSError:
                status = 0
            self.samples.append((time.monotonic(), status))
            self._stop.wait(0.25)

    def between(self, start: float, end: float) -> list[int]:
        return [status for t, status in self.samples if start <= t <= end]


TAIL_S = 10.0  # load after the last restart is back


def restart_action(cluster: LocalKafka, restart: Restart, down_for: float) -> Callable[[], None]:
    def act() -> None:
        restart.begun = time.monotonic()
        try:
            cluster.stop_node(restart.node, kill=restart.kill)
            restart.stopped = time.monotonic()
            time.sleep(down_for)
            restart.started = time.monotonic()
            cluster.start_node(cluster.members[restart.node - 1])
            cluster.wait_ready(120)
        except Exception as exc:  # the test says so; the load stops
            restart.failed = f"{type(exc).__name__}: {exc}"
            return
        restart.back = time.monotonic()

    return act


@dataclasses.dataclass
class Outcome:
    answers: list[Answer]
    raw: list[tuple[str, bytes]]  # (request id, value) of every cfn.raw record
    events: list[dict[str, object]]
    incidents: list[dict[str, object]]
    ingest_log: str
    worker_log: str
    kafka_up: tuple[float, float]  # cfn_kafka_up of ingest and worker at the end
    ready: ReadySampler  # the ingest's /readyz answers through the run
    load_started: float
    load_ended: float


def run_restarts(
    cluster: LocalKafka,
    tmp_path: Path,
    restarts: list[tuple[float, Restart]],
    *,
    rate: float,
    seconds: float,
    down_for: float,
    env: dict[str, str],
    partitions: int,
) -> Outcome:
    """Load an ingest and a worker at `rate` for `seconds`, restarting nodes at the given
    offsets; then wait until the worker has committed all of cfn.raw and read every topic to
    its end offsets."""
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"rs{token}.", f"rs-{token}"
    ingest: Process | None = None
    worker: Process | None = None
    try:
        ingest = start_ingest(
            tmp_path, cluster.bootstrap, prefix, {"CFN_INGEST_SECRET": SECRET, **env}
        )
        worker = start_worker(
            tmp_path,
            cluster.bootstrap,
            prefix,
            app_id,
            {**env, **FAST_FAILOVER},
            partitions=partitions,
        )
        # Restarts run one after another, each once the previous node is back (under load a
        # node took 15-30 s here from SIGTERM to registered again), and the load goes on for
        # at least `seconds` and until TAIL_S after the last node is back: every restart is
        # under load, however slow the machine.
        bodies, _pairs = load_bodies(int(rate * (seconds + 240)), token, lag=40)
        actions = {int(rate * at): restart_action(cluster, r, down_for) for at, r in restarts}

        def done() -> bool:
            now = time.monotonic()
            if any(r.failed for _, r in restarts):
                return True
            return now - load_started >= seconds and all(
                r.back > 0 and now - r.back >= TAIL_S for _, r in restarts
            )

        with ReadySampler(ingest.admin_port) as ready:
            load_started = time.monotonic()
            answers = run_load(ingest.port, bodies, rate, actions, until=done)
            load_ended = time.monotonic()
        for _at, r in restarts:
            assert r.back > 0, f"node {r.node} did not come back: {r.failed}"
        run(wait_caught_up(cluster.bootstrap, app_id, f"{prefix}raw", timeout=240))
        raw = [
            (dict(r.headers)["cfn-request-id"].decode(), r.value)
            for r in run(read_to_end(cluster.bootstrap, f"{prefix}raw"))
        ]
        events = checked(
            "events", [r.value for r in run(read_to_end(cluster.bootstrap, f"{prefix}events"))]
        )
        incidents = checked(
            "incidents",
            [r.value for r in run(read_to_end(cluster.bootstrap, f"{prefix}incidents"))],
        )
        up = (
            metric_lines(ingest.admin_port, "cfn_kafka_up").get("cfn_kafka_up", -1.0),
            metric_lines(worker.port, "cfn_kafka_up").get("cfn_kafka_up", -1.0),
        )
        for alive in (ingest, worker):
            assert alive.proc is not None and alive.proc.poll() is None, alive.output
    finally:
        for process in (worker, ingest):
            if process is not None:
                process.stop(timeout=15)
    return Outcome(
        answers,
        raw,
        events,
        incidents,
        ingest.output,
        worker.output,
        up,
        ready,
        load_started,
        load_ended,
    )


def check(name: str, out: Outcome, restarts: list[Restart]) -> tuple[str, Counter[int]]:
    """The promises every restart test keeps; returns the figures block and status counts."""
    answers = out.answers
    accepted = [a for a in answers if a.status == 202]
    codes = Counter(a.status for a in answers)
    in_raw = raw_check([(a.request_id or "", a.body) for a in accepted], out.raw)
    expected = {event_id(a.body) for a in accepted}
    event_counts = Counter(str(e["event_id"]) for e in out.events)
    missing_events = expected - set(event_counts)
    duplicated = [i for i, c in event_counts.items() if c > 1]
    versions = Counter((i["incident_id"], i["version"]) for i in out.incidents)
    duplicated_versions = [v for v, c in versions.items() if c > 1]
    slowest = max(a.done - a.sent for a in answers)
    late = [a for a in answers if a.done - a.sent > ANSWER_BOUND_S]
    bad = [
        a for a in answers if a.status not in (202, 503) or (a.status == 503 and not a.retry_after)
    ]
    recovery = []
    for r in restarts:
        after = [a.done for a in accepted if a.done >= r.back]
        recovery.append(min(after) - r.back if after else float("inf"))
    gap = longest_gap([a.done for a in accepted], out.load_started, out.load_ended)
    aiokafka_lines = sum(" aiokafka" in line for line in out.ingest_log.splitlines())
    worker_aiokafka_lines = sum(" aiokafka" in line for line in out.worker_log.splitlines())
    figures = report(
        name,
        [
            (
                "restarts",
                ", ".join(f"node {r.node} {'SIGKILL' if r.kill else 'SIGTERM'}" for r in restarts),
            ),
            ("load_duration_s", f"{out.load_ended - out.load_started:.1f}"),
            (
                "restart_at_s_stop_s_start_to_back_s",
                ", ".join(
                    f"t+{r.begun - out.load_started:.1f} {r.stopped - r.begun:.1f} "
                    f"{r.back - r.started:.1f}"
                    for r in restarts
                ),
            ),
            ("requests_sent", len(answers)),
            ("answers", dict(sorted(codes.items()))),
            ("slowest_answer_s", f"{slowest:.2f}"),
            ("longest_gap_without_202_s", f"{gap:.1f}"),
            ("first_202_after_broker_back_s", ", ".join(f"{x:.1f}" for x in recovery)),
            ("accepted_missing_from_raw", len(in_raw.missing)),
            ("accepted_altered_in_raw", len(in_raw.altered)),
            ("accepted_twice_in_raw", len(in_raw.repeated)),
            ("accepted_events_missing", len(missing_events)),
            ("duplicate_event_ids", len(duplicated)),
            ("duplicate_incident_versions", len(duplicated_versions)),
            ("kafka_up_at_end_ingest_worker", out.kafka_up),
            ("ingest_log_lines_from_aiokafka", aiokafka_lines),
            ("worker_log_lines_from_aiokafka", worker_aiokafka_lines),
            ("ingest_unreachable_lines", out.ingest_log.count("Kafka unreachable")),
        ],
    )
    assert not bad, f"answers other than 202 or 503 + Retry-After: {bad[:3]}\n{figures}"
    assert not late, f"{len(late)} answers took over {ANSWER_BOUND_S}s\n{figures}"
    assert not in_raw.missing, f"202 answers whose exact bytes are not in cfn.raw\n{figures}"
    assert not in_raw.altered, f"202 answers with other bytes in cfn.raw\n{figures}"
    assert not missing_events, f"accepted notifications lost downstream\n{figures}"
    assert not duplicated, f"event ids emitted more than once\n{figures}"
    assert not duplicated_versions, f"duplicate (incident_id, version)\n{figures}"
    assert all(x <= BACK_BOUND_S for x in recovery), f"no 202 soon after a restart\n{figures}"
    assert out.kafka_up == (1.0, 1.0), f"cfn_kafka_up is not 1 at the end\n{figures}"
    # One line per change, not a flood per retry: a handful per restart at most.
    assert aiokafka_lines <= 15 * len(restarts), f"aiokafka floods the ingest log\n{figures}"
    assert worker_aiokafka_lines <= 15 * len(restarts), f"aiokafka floods the log\n{figures}"
    return figures, codes


def start_cluster(path: Path, nodes: int, attempts: int = 3) -> LocalKafka:
    """A started cluster; a start that fails (a free port taken by another process before the
    broker bound it, as seen once in CI) is retried on new ports and fresh storage."""
    failures: list[str] = []
    for attempt in range(attempts):
        where = path if attempt == 0 else path.with_name(f"{path.name}-{attempt}")
        cluster = LocalKafka(where, port=free_port_block(nodes), nodes=nodes, heap="384m")
        try:
            cluster.start(timeout=150)
        except BrokerError as exc:
            cluster.stop()
            failures.append(str(exc))
            continue
        return cluster
    pytest.fail(f"the {nodes}-node cluster could not start: {failures}", pytrace=False)


def test_one_broker_restarted_three_times_and_crashed_once(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "kafka1", 1)
    restarts = [
        (10.0, Restart(1, kill=False)),
        (35.0, Restart(1, kill=False)),
        (60.0, Restart(1, kill=False)),
        (85.0, Restart(1, kill=True)),
    ]
    try:
        out = run_restarts(
            cluster,
            tmp_path,
            restarts,
            rate=40.0,
            seconds=110.0,
            down_for=6.0,
            env={"CFN_PARTITIONS": "4"},
            partitions=4,
        )
    finally:
        cluster.stop()
    figures, codes = check("one_broker_restarts", out, [r for _, r in restarts])
    assert codes[503] > 0, f"the broker was down, yet no request was refused\n{figures}"
    ready = out.ready
    for _, r in restarts:
        # Down: every answer from 3.5 s after the node stopped (a probe a second, each bounded
        # by 2 s) until it started again says 503.
        down = ready.between(r.stopped + 3.5, r.started)
        assert down and set(down) == {503}, f"/readyz while node {r.node} was down: {down}"
        # Back: /readyz says 200 again within the recovery bound.
        assert 200 in ready.between(r.back, r.back + BACK_BOUND_S), "/readyz stayed 503"
    assert out.ingest_log.count("Kafka reachable again") >= len(restarts), out.ingest_log[-3000:]


@pytest.mark.parametrize("mode", ["partition", "worker"])
def test_rolling_restart_of_three_nodes(tmp_path: Path, mode: str) -> None:
    """Under load, with either owner of the worker's transactions (CFN_TRANSACTIONS)."""
    cluster = start_cluster(tmp_path / "kafka3", 3)
    restarts = [
        (10.0, Restart(1, kill=False)),
        (30.0, Restart(2, kill=False)),
        (50.0, Restart(3, kill=False)),
    ]
    try:
        out = run_restarts(
            cluster,
            tmp_path,
            restarts,
            rate=40.0,
            seconds=75.0,
            down_for=2.0,
            env={"CFN_PARTITIONS": "6", "CFN_REPLICATION": "3", "CFN_TRANSACTIONS": mode},
            partitions=6,
        )
    finally:
        cluster.stop()
    figures, _codes = check("rolling_restart", out, [r for _, r in restarts])
    gap = longest_gap(
        [a.done for a in out.answers if a.status == 202], out.load_started, out.load_ended
    )
    assert gap <= BACK_BOUND_S, f"a gap of {gap:.1f}s without a 202 in a rolling restart\n{figures}"


def test_idle_ingest_answers_202_first_after_restarts(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "kafka-idle", 1)
    token = uuid.uuid4().hex[:8]
    ingest: Process | None = None
    firsts: list[int] = []
    while_down: list[int] = []
    try:
        ingest = start_ingest(
            tmp_path, cluster.bootstrap, f"id{token}.", {"CFN_INGEST_SECRET": SECRET}
        )
        bodies, _ = load_bodies(9, token, lag=1)
        assert post_one(ingest.port, 0, bodies[0]).status == 202
        for index, kill in ((1, False), (2, True), (3, False)):
            cluster.stop_node(1, kill=kill)
            # A request while Kafka is away: 503, and its record stays in the producer, retried
            # with a sequence number the restarted broker may no longer accept.
            while_down.append(post_one(ingest.port, index, bodies[index]).status)
            cluster.start_node(cluster.members[0])
            cluster.wait_ready(120)
            deadline = time.monotonic() + 30
            while request(ingest.admin_port, "GET", "/readyz", timeout=3).status != 200:
                assert time.monotonic() < deadline, f"/readyz not 200 again:\n{ingest.output}"
                time.sleep(0.25)
            time.sleep(3.0)  # idle: no request while the ingest is back
            firsts.append(post_one(ingest.port, index + 3, bodies[index + 3]).status)
        output = ingest.output
    finally:
        if ingest is not None:
            ingest.stop(timeout=15)
        cluster.stop()
    report(
        "idle_restarts",
        [("answers_while_down", while_down), ("first_answers_after_restart", firsts)],
    )
    assert while_down == [503, 503, 503], while_down
    assert firsts == [202, 202, 202], f"first answers after restarts: {firsts}\n{output[-3000:]}"
    # One line when Kafka went away and one when it came back, per restart.
    assert 3 <= output.count("Kafka unreachable") <= 4, output[-3000:]
    assert output.count("Kafka reachable again") == output.count("Kafka unreachable")
