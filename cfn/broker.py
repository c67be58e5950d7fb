"""A local Apache Kafka (KRaft) for development, tests and `make run`: `cfn broker`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.4.0"
REPO_ROOT = Path(__file__).resolve().parents[1]
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"


class BrokerError(Exception):
    """The local broker could not be fetched, formatted or started; the message says why."""


def cache_dir() -> Path:
    """Where the Kafka jars live: outside the tracked tree, shared by every checkout."""
    base = os.environ.get("CFN_KAFKA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cfn", "kafka"
    )
    return Path(base) / KAFKA_VERSION


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of `name` or raise a BrokerError naming what to install."""
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` was not found on PATH. Install {install_hint} and retry.")
    return path


def ensure_jars() -> Path:
    """Fetch the broker jars with Maven once; later calls reuse the cache.

    Returns:
        The folder holding the jars (a Java classpath wildcard target).

    Raises:
        BrokerError: Java or Maven is missing, or Maven could not fetch the jars.
    """
    require_tool("java", "a Java 17+ runtime (Debian: `apt-get install openjdk-17-jre-headless`)")
    libs = cache_dir() / "libs"
    marker = cache_dir() / ".complete"
    # The marker holds a digest of the pom: a dependency added to it is fetched on the next run.
    # (An installed cfn without the repository's pom uses whatever the cache holds.)
    wanted = hashlib.sha256(POM.read_bytes()).hexdigest() if POM.exists() else KAFKA_VERSION
    if marker.exists() and (not POM.exists() or marker.read_text().strip() == wanted):
        return libs
    mvn = require_tool("mvn", "Apache Maven (Debian: `apt-get install maven`)")
    if not POM.exists():
        raise BrokerError(f"{POM} is missing; run cfn from a checkout of the repository.")
    # Fetched into a folder of its own, then swapped in: a changed pom leaves no stale jar on
    # the classpath, and a broker already running keeps the jars it opened.
    fresh = cache_dir() / f"libs.fetching-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={fresh}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BrokerError("Maven could not fetch the Kafka jars:\n  " + "\n  ".join(tail))
    old = cache_dir() / f"libs.old-{os.getpid()}"
    if libs.exists():
        libs.rename(old)
    fresh.rename(libs)
    shutil.rmtree(old, ignore_errors=True)
    marker.write_text(wanted)
    return libs


def _cluster_id() -> str:
    """A random Kafka cluster id. Like Kafka's own Uuid.randomUuid(), never one that starts with
    "-": the storage tool would read it as an option (1 start in 64 failed that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class Node:
    """One combined broker+controller process of the local cluster."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"


@dataclass
class LocalKafka:
    """Runs a one- or three-node KRaft cluster on loopback; used by the CLI and the test fixtures.

    It trades production realism (plaintext, loopback, tiny heaps) for a start measured in
    seconds and no installation beyond Java and Maven.
    """

    data_dir: Path
    port: int = 9092
    nodes: int = 1
    controller_port: int | None = None
    heap: str = "512m"
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        cport = self.controller_port or self.port + 10000
        self.members = [
            Node(i + 1, self.port + i, cport + i, self.data_dir / f"node-{i + 1}")
            for i in range(self.nodes)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.members)

    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)
        rf = min(3, self.nodes)
        isr = 2 if self.nodes >= 3 else 1
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir / "logs"),
            # Topics are created on purpose by cfn, with the partition count it needs.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr),
            "transaction.state.log.num.partitions": "12",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr),
            # Group joins otherwise wait 3 s for more members: tests and `make run` want speed.
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xss1m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, libs: Path, node: Node, cluster_id: str) -> None:
        props = node.data_dir / "server.properties"
        result = subprocess.run(
            self._java(
                libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(f"formatting node {node.node_id} failed: {result.stderr.strip()}")

    def start(self, timeout: float = 90.0) -> None:
        """Fetch jars, format storage on first start, start every node and wait until ready.

        Raises:
            BrokerError: a tool is missing, a node exits early, or metadata never answers.
        """
        libs = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(_cluster_id())
        cluster_id = id_file.read_text().strip()
        for node in self.members:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            (node.data_dir / "server.properties").write_text(self._properties(node))
            if not (node.data_dir / "logs" / "meta.properties").exists():
                self._format(libs, node, cluster_id)
        for node in self.members:
            self.start_node(node)
        self.wait_ready(timeout)

    def start_node(self, node: Node) -> None:
        """Start (or restart) one node's JVM; its output goes to broker.log in its folder."""
        libs = cache_dir() / "libs"
        log = node.log_file.open("ab")
        node.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(node.data_dir / "server.properties")),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until every running node answers a metadata request that lists all of them."""
        deadline = time.monotonic() + timeout
        want = sum(1 for n in self.members if n.process and n.process.poll() is None)
        last = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.members:
                if node.process is not None and node.process.poll() is not None:
                    raise BrokerError(
                        f"node {node.node_id} exited with {node.process.returncode}; "
                        f"see {node.log_file}"
                    )
            try:
                seen = asyncio.run(_count_brokers(self.bootstrap))
                if seen >= want:
                    return
                last = f"{seen}/{want} brokers registered"
            except Exception as exc:  # any failure means "not ready yet"
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise BrokerError(f"broker not ready after {timeout:.0f}s ({last}); see {self.data_dir}")

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: the fault tests use this to lose a broker mid-stream."""
        self.stop_node(node_id, kill=True)

    def stop_node(self, node_id: int, *, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop one node: SIGTERM (a controlled shutdown) or SIGKILL (a crash)."""
        node = self.members[node_id - 1]
        process = node.process
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart_node(
        self, node_id: int, *, kill: bool = False, down_for: float = 0.0, timeout: float = 90.0
    ) -> None:
        """Stop one node, keep it down `down_for` seconds, start it on the same storage and
        wait until every node is registered again (a rolling restart is this, node by node)."""
        self.stop_node(node_id, kill=kill)
        time.sleep(down_for)
        self.start_node(self.members[node_id - 1])
        self.wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node with SIGTERM (controlled shutdown), then SIGKILL stragglers."""
        for node in self.members:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + timeout
        for node in self.members:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


async def _count_brokers(bootstrap: str) -> int:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    # "Unable connect" warnings are the expected answer while the JVM starts.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()


def run_broker(data_dir: Path, port: int, nodes: int) -> int:
    """Foreground entry for `cfn broker`: start, print ready, stop on SIGINT/SIGTERM."""
    from cfn.runner import StopFlag, supervise

    kafka = LocalKafka(data_dir=data_dir, port=port, nodes=nodes)
    stop = StopFlag()
    try:
        print(f"cfn broker: starting Apache Kafka {KAFKA_VERSION} ({nodes} node(s))", flush=True)
        kafka.start()
    except BrokerError as exc:
        kafka.stop()
        print(f"cfn broker: {exc}", file=sys.stderr)
        return 2
    print(f"cfn broker: ready on {kafka.bootstrap} (logs under {data_dir})", flush=True)
    processes = {f"node {n.node_id}": n.process for n in kafka.members if n.process is not None}
    logs = {f"node {n.node_id}": str(n.log_file) for n in kafka.members}
    code = supervise("cfn broker", stop, processes, logs.__getitem__)
    print("cfn broker: stopping", flush=True)
    kafka.stop()
    print("cfn broker: stopped", flush=True)
    return code
