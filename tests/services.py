"""Starting cfn's own processes for broker tests, and a tiny HTTP client."""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio

# Ports for listeners are drawn below Linux's ephemeral range (ip_local_port_range, 32768 and up):
# a test that restarts a process on its port would otherwise find it taken, now and then, by a
# client's outgoing connection made while the listener was down (EADDRINUSE).
LISTEN_PORTS = (12000, 22000)  # + 10000 for a controller port stays below 32768


# Every port free_block has handed out in this process: a process started on one may not have
# bound it yet when the next is drawn (the nemesis starts its workers without waiting), so a
# port is never handed out twice (seed 129: two workers drew the same metrics port).
_HANDED_OUT: set[int] = set()


def free_block(size: int, spread: tuple[int, ...] = (0,)) -> int:
    """A first port p such that p..p+size-1, each plus every offset in `spread`, are free and
    were not handed out before by this process."""
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(LISTEN_PORTS[0], LISTEN_PORTS[1] - size)
        wanted = [p + offset for p in range(base, base + size) for offset in spread]
        if not _HANDED_OUT.intersection(wanted) and all(_bindable(port) for port in wanted):
            _HANDED_OUT.update(wanted)
            return base
    raise RuntimeError(f"no {size} free ports on loopback in {LISTEN_PORTS}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    return free_block(1)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return jsonio.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


@dataclass
class Process:
    """A cfn subprocess whose combined output is captured to a file for later assertions."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    admin_port: int = 0  # the ingest's /metrics, /readyz and /openapi.json
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def cfn_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment minus anything Faust or cfn would read by accident, plus extra."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CFN_") and k not in ("BROKER_URL", "WEB_PORT", "APP_ID")
    }
    env.update(extra)
    return env


def start_ingest(
    tmp: Path,
    bootstrap: str,
    prefix: str,
    env: Mapping[str, str],
    *args: str,
    wait_for: str = "/readyz",
) -> Process:
    """Start `cfn ingest` on a free port and wait until `wait_for` (/readyz: ready to take
    webhooks; /healthz: up, maybe not ready) answers 200 on its admin port."""
    port = free_port()
    admin = int(env.get("CFN_INGEST_ADMIN_PORT") or free_port())
    process = Process(
        [sys.executable, "-m", "cfn", "ingest", *args],
        cfn_env(
            {
                "CFN_KAFKA_BOOTSTRAP": bootstrap,
                "CFN_TOPIC_PREFIX": prefix,
                "CFN_INGEST_PORT": str(port),
                "CFN_INGEST_ADMIN_PORT": str(admin),
                "CFN_PARTITIONS": "4",
                **env,
            }
        ),
        tmp / f"ingest-{port}.log",
        port=port,
        admin_port=admin,
    )
    process.start()
    wait_ready(process, admin, wait_for)
    return process


def wait_ready(process: Process, port: int, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.proc is not None
        if process.proc.poll() is not None:
            raise AssertionError(f"process exited early:\n{process.output}")
        try:
            if request(port, "GET", path, timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    process.stop()
    raise AssertionError(f"{path} never answered 200:\n{process.output}")


def start_worker(
    tmp: Path,
    bootstrap: str,
    prefix: str,
    app_id: str,
    env: Mapping[str, str] | None = None,
    *,
    partitions: int = 4,
    wait: bool = True,
    module: str = "cfn worker",
) -> Process:
    """Start `cfn worker` (or another `python -m` command line, `module`) with its own metrics
    port and wait until it has its partitions."""
    port = free_port()
    process = Process(
        [sys.executable, "-m", *module.split()],
        cfn_env(
            {
                "CFN_KAFKA_BOOTSTRAP": bootstrap,
                "CFN_TOPIC_PREFIX": prefix,
                "CFN_APP_ID": app_id,
                "CFN_PARTITIONS": str(partitions),
                "CFN_WORKER_METRICS_PORT": str(port),
                "CFN_TICK_INTERVAL": "0.5s",
                # The test's own: a worker restarted in the test keeps its id (and its slot).
                "CFN_STATE_DIR": str(tmp / "cfn-state"),
                **(env or {}),
            }
        ),
        tmp / f"worker-{port}.log",
        port=port,
    )
    process.start()
    if wait:
        wait_worker(process)
    return process


def wait_worker(process: Process, timeout: float = 90.0) -> None:
    """Wait until /readyz says the worker has rebuilt its state for an assignment."""
    wait_ready(process, process.port, "/readyz", timeout)


def metric_value(port: int, sample: str) -> float:
    """The value of one exposition line (exact name and labels), or 0 when absent."""
    for line in request(port, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def shadow_replay(bootstrap: str, prefix: str, env: Mapping[str, str], partitions: int) -> None:
    """`cfn replay` of the whole raw topic of `prefix` into its shadow topics (replay.<prefix>),
    with the worker's settings `env`; asserts it succeeded."""
    settings = cfn_env(
        {
            "CFN_KAFKA_BOOTSTRAP": bootstrap,
            "CFN_TOPIC_PREFIX": prefix,
            **env,
            "CFN_PARTITIONS": str(partitions),
        }
    )
    replayed = subprocess.run(
        [sys.executable, "-m", "cfn", "replay", "--from", "2000-01-01T00:00:00Z"],
        env=settings,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
