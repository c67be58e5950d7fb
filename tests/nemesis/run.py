"""One nemesis run: a cluster behind Toxiproxy, the processes, the load, the faults, the checker.

A 3-node cluster whose clients all go through one Toxiproxy proxy per broker (brokers and
controllers talk directly), two ingests and three workers, supervised: a process the nemesis
killed is started again by the nemesis, as a supervisor would; any other exit is a violation.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cfn.shell.broker import LocalKafka
from tests.conftest import free_port_block
from tests.kafka_util import read_to_end, run, wait_caught_up
from tests.nemesis.checker import History, RawRecord, Violation, check
from tests.nemesis.load import plan
from tests.nemesis.schedule import Fault, draw
from tests.nemesis.toxiproxy import Toxiproxy
from tests.services import Process, free_port, request, start_ingest, start_worker

BROKERS, INGESTS, WORKERS, PARTITIONS = 3, 2, 3, 6
RATE = 20.0  # deliveries planned per second (retries come on top)
TENANTS = ["acme", "globex", "initech"]
SESSION = "6s"  # the workers' CFN_SESSION_TIMEOUT (and so their failover time)
SETTLE_TIMEOUT = 300.0


@dataclasses.dataclass
class Member:
    """A supervised cfn process: `down` while the nemesis holds it down on purpose."""

    name: str
    process: Process
    ready_port: int
    down: bool = False
    holds: int = 0  # faults holding it down now
    restarts: int = 0


class Cast:
    """The ingests and workers, and a supervisor thread that notes and restarts any exit the
    nemesis did not cause (the checker reports each as a process that needed a restart)."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.exits: list[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def add(self, name: str, process: Process, ready_port: int) -> None:
        self.members[name] = Member(name, process, ready_port)

    def start_watching(self) -> None:
        self._thread.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def take_down(self, name: str, signum: int) -> None:
        """Stop `name` with `signum` and hold it down until every fault holding it brings it up:
        a graceful stop can outlast its planned slot and overlap the next fault on the same
        process, and two starts would leave one process untracked, holding the other's port."""
        member = self.members[name]
        with self.lock:
            member.holds += 1
            member.down = True
        proc = member.process.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def bring_up(self, name: str) -> None:
        member = self.members[name]
        with self.lock:
            member.holds -= 1
            if member.holds > 0:
                return
            proc = member.process.proc
            if proc is None or proc.poll() is not None:
                member.process.start()
                member.restarts += 1
            member.down = False

    def signal(self, name: str, signum: int) -> None:
        proc = self.members[name].process.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for member in self.members.values():
                with self.lock:
                    proc = member.process.proc
                    if member.down or proc is None or proc.poll() is None:
                        continue
                    tail = member.process.output.strip().splitlines()[-3:]
                    self.exits.append(
                        f"{member.name} exited {proc.returncode} at {time.time():.1f}: {tail}"
                    )
                    member.process.start()
                    member.restarts += 1


class ReadySampler:
    """Every process's /readyz, twice a second: (name, wall time, status; 0 no answer)."""

    def __init__(self, cast: Cast) -> None:
        self.cast = cast
        self.samples: list[tuple[str, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for member in list(self.cast.members.values()):
                try:
                    status = request(member.ready_port, "GET", "/readyz", timeout=1.0).status
                except OSError:
                    status = 0
                # When the answer came: it tells the state of that moment, not of the ask.
                self.samples.append((member.name, time.time(), status))


@dataclasses.dataclass
class Applied:
    """A fault as it happened: wall times of its start and of its heal (0 until healed)."""

    fault: Fault
    started: float = 0.0
    healed: float = 0.0
    error: str = ""


class Nemesis:
    """Applies a schedule's faults, each on its own thread at its time, and heals them."""

    def __init__(self, cluster: LocalKafka, proxy: Toxiproxy, cast: Cast) -> None:
        self.cluster, self.proxy, self.cast = cluster, proxy, cast
        self.applied: list[Applied] = []
        self.threads: list[threading.Thread] = []
        self.healing: dict[int, float] = {}  # id(fault) -> when its healing started

    def schedule(self, faults: list[Fault], start: float) -> None:
        for fault in faults:
            applied = Applied(fault)
            self.applied.append(applied)
            thread = threading.Thread(target=self._run, args=(applied, start), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self, applied: Applied, start: float) -> None:
        fault = applied.fault
        time.sleep(max(0.0, start + fault.at - time.time()))
        applied.started = time.time()
        try:
            self._apply(fault)
        except Exception as exc:  # reported with the schedule; the heal step still runs
            applied.error = f"{type(exc).__name__}: {exc}"
        applied.healed = time.time()

    def _for(self, fault: Fault) -> Callable[[], None]:
        """The fault's pause; its end, when healing starts, is noted (`outages`)."""

        def wait() -> None:
            time.sleep(fault.duration)
            self.healing[id(fault)] = time.time()

        return wait

    def _apply(self, fault: Fault) -> None:
        wait = self._for(fault)
        proxies = [f"kafka-{t}" for t in fault.targets]
        workers = [f"worker-{t}" for t in fault.targets]
        if fault.kind == "partition":
            for name in proxies:
                self.proxy.enable(name, False)
            wait()
            for name in proxies:
                self.proxy.enable(name, True)
        elif fault.kind in ("latency", "blackhole", "slow"):
            kind, attributes = {
                "latency": ("latency", {"latency": int(fault.params.get("latency_ms", 500))}),
                "blackhole": ("timeout", {"timeout": 0}),
                "slow": ("bandwidth", {"rate": int(fault.params.get("rate_kbps", 8))}),
            }[fault.kind]
            for name in proxies:
                for stream in ("upstream", "downstream"):
                    self.proxy.add_toxic(name, f"{fault.kind}-{stream}", kind, stream, **attributes)
            wait()
            for name in proxies:
                for stream in ("upstream", "downstream"):
                    self.proxy.remove_toxic(name, f"{fault.kind}-{stream}")
                if fault.kind == "blackhole":
                    # What a black hole dropped leaves each stream cut mid-frame: it ends with
                    # the connections reset (as a NAT or firewall timing them out would).
                    self.proxy.enable(name, False)
                    self.proxy.enable(name, True)
        elif fault.kind == "hang_broker":
            node = self.cluster.members[fault.targets[0] - 1]
            assert node.process is not None
            node.process.send_signal(signal.SIGSTOP)
            wait()
            node.process.send_signal(signal.SIGCONT)
        elif fault.kind == "quorum_loss":
            kill = bool(fault.params.get("kill"))
            stoppers = [
                threading.Thread(
                    target=self.cluster.stop_node, args=(n,), kwargs={"kill": kill, "timeout": 15}
                )
                for n in fault.targets
            ]
            for thread in stoppers:
                thread.start()
            for thread in stoppers:
                thread.join()
            wait()
            for n in fault.targets:
                self.cluster.start_node(self.cluster.members[n - 1])
            self.cluster.wait_ready(180)
        elif fault.kind == "ingest_kill":
            name = f"ingest-{fault.targets[0]}"
            self.cast.take_down(name, signal.SIGKILL)
            wait()
            self.cast.bring_up(name)
        elif fault.kind in ("worker_kill", "workers_crash", "scale_in"):
            how = signal.SIGTERM if fault.kind == "scale_in" else signal.SIGKILL
            downs = [threading.Thread(target=self.cast.take_down, args=(w, how)) for w in workers]
            for thread in downs:
                thread.start()
            for thread in downs:
                thread.join()
            wait()
            for name in workers:
                self.cast.bring_up(name)
            again = fault.params.get("again_after", 0.0)
            if again:
                time.sleep(again)  # while it fences, restores and joins
                self.cast.take_down(workers[0], signal.SIGKILL)
                time.sleep(1.0)
                self.cast.bring_up(workers[0])
        elif fault.kind == "worker_stall":
            self.cast.signal(workers[0], signal.SIGSTOP)
            wait()
            self.cast.signal(workers[0], signal.SIGCONT)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def outages(self) -> list[tuple[float, float]]:
        """When every client link to Kafka was cut by one fault (all proxies down or black)."""
        # From the fault's start to the start of its healing: the links carry data again as
        # soon as the first proxy is healed, before the last is.
        return [
            (a.started, self.healing.get(id(a.fault), a.healed))
            for a in self.applied
            if a.fault.kind in ("partition", "blackhole") and len(a.fault.targets) == BROKERS
        ]


def heal(cluster: LocalKafka, proxy: Toxiproxy, cast: Cast) -> None:
    """Whatever is still broken: proxies reset, nodes continued or started, processes too."""
    proxy.reset()
    for node in cluster.members:
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGCONT)
        else:
            cluster.start_node(node)
    cluster.wait_ready(180)
    for name, member in cast.members.items():
        cast.signal(name, signal.SIGCONT)
        if member.down:
            cast.bring_up(name)


def wait_ready_all(cast: Cast, timeout: float) -> dict[str, int]:
    """Each process's /readyz once it says 200, or its last answer at the deadline."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    while True:
        for name, member in cast.members.items():
            if last.get(name) == 200:
                continue
            try:
                last[name] = request(member.ready_port, "GET", "/readyz", timeout=2).status
            except OSError:
                last[name] = 0
        if all(v == 200 for v in last.values()) or time.monotonic() > deadline:
            return last
        time.sleep(0.5)


@dataclasses.dataclass
class Outcome:
    seed: int
    faults: list[Applied]
    violations: list[Violation]
    figures: list[tuple[str, object]]
    folder: Path


def run_once(
    seed: int,
    duration: float,
    folder: Path,
    *,
    faults: list[Fault] | None = None,
    worker_module: str = "cfn worker",
) -> Outcome:
    """Start everything, load it for `duration` seconds under the seed's faults (or `faults`),
    heal, settle, read every topic and check it. `worker_module` is the workers' `python -m` command
    line (tests.nemesis.broken for a deliberately broken one)."""
    folder.mkdir(parents=True, exist_ok=True)
    if faults is None:
        faults = draw(seed, duration, brokers=BROKERS, ingests=INGESTS, workers=WORKERS)
    print(f"nemesis: seed {seed}, {len(faults)} faults, logs in {folder}", flush=True)
    for fault in faults:
        print(f"  {fault.describe()}", flush=True)
    token = uuid.uuid4().hex[:8]
    prefix, app_id = f"nm{token}.", f"nm-{token}"
    proxy = Toxiproxy(free_port(), folder / "toxiproxy.log", seed=seed)
    base = free_port_block(BROKERS)
    cluster = LocalKafka(
        folder / "kafka",
        port=base,
        nodes=BROKERS,
        heap="384m",
        proxy_port=free_port_block(BROKERS),
        internal_port=free_port_block(BROKERS),
    )
    cast = Cast()
    sampler = ReadySampler(cast)
    load: subprocess.Popen[bytes] | None = None
    try:
        proxy.start()
        for node in cluster.members:
            assert node.proxy_port is not None
            proxy.create(f"kafka-{node.node_id}", node.proxy_port, node.port)
        cluster.start(timeout=180)
        tenant_secrets = {t: secrets.token_hex(16) for t in TENANTS}
        secrets_file = folder / "secrets.json"
        secrets_file.write_text(json.dumps(tenant_secrets))
        common = {"CFN_REPLICATION": "3", "CFN_PARTITIONS": str(PARTITIONS)}
        for i in range(INGESTS):
            env = {**common, "CFN_INGEST_SECRETS_FILE": str(secrets_file)}
            ingest = start_ingest(folder, cluster.bootstrap, prefix, env)
            cast.add(f"ingest-{i}", ingest, ingest.admin_port)
        for i in range(WORKERS):
            env = {**common, "CFN_SESSION_TIMEOUT": SESSION}
            worker = start_worker(
                folder,
                cluster.bootstrap,
                prefix,
                app_id,
                env,
                partitions=PARTITIONS,
                wait=i == WORKERS - 1,
                module=worker_module,
            )
            cast.add(f"worker-{i}", worker, worker.port)
        ready = wait_ready_all(cast, 120)
        assert all(v == 200 for v in ready.values()), f"not ready before the load: {ready}"
        cast.start_watching()
        sampler.start()

        epoch = int(time.time())
        sends = plan(seed, duration, RATE, TENANTS, epoch)
        plan_file, answers_file = folder / "plan.json", folder / "answers.jsonl"
        plan_file.write_text(
            json.dumps({"secrets": tenant_secrets, "sends": [dataclasses.asdict(s) for s in sends]})
        )
        ports = [cast.members[f"ingest-{i}"].process.port for i in range(INGESTS)]
        load_started = time.time()
        command = [sys.executable, "-m", "tests.nemesis.load", str(plan_file), str(answers_file)]
        with (folder / "load.log").open("wb") as load_log:  # the child keeps its own copy
            load = subprocess.Popen(
                [*command, *map(str, ports)], stdout=subprocess.DEVNULL, stderr=load_log
            )
        nemesis = Nemesis(cluster, proxy, cast)
        nemesis.schedule(faults, load_started)
        nemesis.join(duration + 300)
        # The client's last retries end within 4 x 16 s of its last send.
        load.wait(duration + 120)
        load_ended = time.time()
        heal(cluster, proxy, cast)
        healed = time.time()
        final_ready = wait_ready_all(cast, 120)
        unsettled = []
        for topic in ("raw", "rate-input"):
            try:
                caught_up = wait_caught_up(
                    cluster.direct_bootstrap, app_id, f"{prefix}{topic}", SETTLE_TIMEOUT
                )
                run(caught_up)
            except AssertionError as exc:  # a liveness violation: checked with the rest
                unsettled.append(f"{time.time() - healed:.0f}s after healing: {exc}")
        settled = time.time()
        sampler.stop()
        cast.stop_watching()
        history = read_history(cluster.direct_bootstrap, prefix, answers_file)
        history.exits = list(cast.exits)
        history.ready = sampler.samples
        history.outages = nemesis.outages()
        history.final_ready = final_ready
        history.unsettled = unsettled
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        # First the supervisor, or it would start again what is being stopped.
        cast.stop_watching()
        sampler.stop()
        for name, member in cast.members.items():
            cast.signal(name, signal.SIGCONT)
            member.process.stop(timeout=15)
        cluster.stop()
        proxy.stop()
    violations = check(history)
    figures = figures_of(history, nemesis.applied, load_started, load_ended, healed, settled, cast)
    outcome = Outcome(seed, nemesis.applied, violations, figures, folder)
    record = {
        "seed": seed,
        "duration": duration,
        "worker": worker_module,
        "violations": [dataclasses.asdict(v) for v in violations],
        "faults": fault_records(history, nemesis.applied, load_started, load_ended),
        "figures": {name: value for name, value in figures},
    }
    (folder / "outcome.json").write_text(json.dumps(record, indent=1, default=str))
    return outcome


def fault_records(
    history: History, applied: list[Applied], load_started: float, load_ended: float
) -> list[dict[str, object]]:
    """Each fault as applied, with what the load saw of it: the longest time without a 202
    that overlaps the fault (its start to its heal), and the time from its heal to the next
    202 (None: no 202 came after it)."""
    accepted = sorted(a["done"] for a in history.answers if a["status"] == 202)
    points = [load_started, *[t for t in accepted if load_started <= t <= load_ended], load_ended]
    out: list[dict[str, object]] = []
    for fault in applied:
        gaps = [
            later - earlier
            for earlier, later in itertools.pairwise(points)
            if earlier <= fault.healed and later >= fault.started
        ]
        after = [t for t in accepted if t >= fault.healed]
        out.append(
            {
                "kind": fault.fault.kind,
                "describe": fault.fault.describe(),
                "planned_s": fault.fault.duration,
                "applied_s": round(fault.healed - fault.started, 1),
                "gap_without_202_s": round(max(gaps, default=0.0), 1),
                "first_202_after_heal_s": round(min(after) - fault.healed, 1) if after else None,
                "error": fault.error,
            }
        )
    return out


def read_history(bootstrap: str, prefix: str, answers_file: Path) -> History:
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    raw = [
        RawRecord(
            dict(r.headers)["cfn-request-id"].decode(),
            dict(r.headers)["cfn-tenant"].decode(),
            r.value,
        )
        for r in run(read_to_end(bootstrap, f"{prefix}raw"))
    ]

    def values(role: str) -> list[dict[str, object]]:
        return [json.loads(r.value) for r in run(read_to_end(bootstrap, f"{prefix}{role}"))]

    table = [
        (r.key.decode(), None if r.value is None else json.loads(r.value))
        for r in run(read_to_end(bootstrap, f"{prefix}incident-state"))
    ]
    return History(answers, raw, values("events"), values("incidents"), table, values("rates"))


def figures_of(
    history: History,
    applied: list[Applied],
    load_started: float,
    load_ended: float,
    healed: float,
    settled: float,
    cast: Cast,
) -> list[tuple[str, object]]:
    answers = history.answers
    codes: dict[int, int] = {}
    for answer in answers:
        codes[answer["status"]] = codes.get(answer["status"], 0) + 1
    accepted = sorted(a["done"] for a in answers if a["status"] == 202)
    points = [load_started, *[t for t in accepted if load_started <= t <= load_ended], load_ended]
    gap = max(later - earlier for earlier, later in itertools.pairwise(points))
    recovery = []
    for fault in applied:
        after = [t for t in accepted if t >= fault.healed]
        back = f"{min(after) - fault.healed:.1f}" if after else "never"
        recovery.append(f"{fault.fault.kind} {back}")
    return [
        ("faults", ", ".join(f.fault.kind for f in applied)),
        ("fault_errors", [f.error for f in applied if f.error]),
        ("load_s", f"{load_ended - load_started:.1f}"),
        ("requests", len(answers)),
        ("answers", dict(sorted(codes.items()))),
        ("deliveries_accepted", len({a["item"] for a in answers if a["status"] == 202})),
        ("longest_gap_without_202_s", f"{gap:.1f}"),
        ("first_202_after_heal_s", ", ".join(recovery)),
        ("heal_to_settled_s", f"{settled - healed:.1f}"),
        ("raw_records", len(history.raw)),
        ("events", len(history.events)),
        ("incident_versions", len(history.incidents)),
        ("rate_records", len(history.rates)),
        ("restarts_by_nemesis", {m.name: m.restarts for m in cast.members.values() if m.restarts}),
        ("unplanned_exits", len(history.exits)),
        ("readyz_samples", len(history.ready)),
    ]


def default_folder(seed: int) -> Path:
    root = Path(
        os.environ.get("CFN_NEMESIS_DIR")
        or Path(__file__).resolve().parents[2] / ".local" / "nemesis"
    )
    return root / f"seed-{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
