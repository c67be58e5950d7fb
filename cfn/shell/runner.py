"""`cfn run` / `make run`: a local broker, the ingest and the worker, in the foreground."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cfn.config import CommandSettings
from cfn.shell.broker import BrokerError, LocalKafka
from cfn.shell.supervisor import StopFlag, supervise

LOCAL = Path(".local")


def _secret() -> str:
    """CFN_INGEST_SECRET, else one generated once and kept in .local/secret (mode 600)."""
    given = CommandSettings.from_env().ingest_secret
    if given:
        return given
    path = LOCAL / "secret"
    if not path.exists():
        LOCAL.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def run_all(port: int = 9092) -> int:
    """Start everything, print the endpoints, stop everything cleanly on Ctrl-C or SIGTERM."""
    stop = StopFlag()
    kafka = LocalKafka(data_dir=LOCAL / "kafka", port=port)
    print(f"cfn run: starting Apache Kafka on 127.0.0.1:{port} (data in {LOCAL}/kafka)", flush=True)
    try:
        kafka.start()
    except BrokerError as exc:
        kafka.stop()
        print(f"cfn run: {exc}", file=sys.stderr)
        return 2
    secret = _secret()
    env = {**os.environ, "CFN_KAFKA_BOOTSTRAP": kafka.bootstrap, "CFN_INGEST_SECRET": secret}
    env.setdefault("CFN_INGEST_PORT", "8080")
    env.setdefault("CFN_INGEST_HOST", "127.0.0.1")
    env.setdefault("CFN_INGEST_ADMIN_PORT", "8081")
    env.setdefault("CFN_WORKER_METRICS_PORT", "9464")
    logs = LOCAL / "logs"
    children = _spawn(env, logs)
    code = 1
    if _wait_ready(env, children):
        _print_endpoints(env, kafka.bootstrap, secret, logs)
        code = supervise("cfn run", stop, children, lambda name: f"{logs}/{name}.log")
    else:
        print(f"cfn run: a service did not become ready; see {logs}/", file=sys.stderr)
    print("cfn run: stopping", flush=True)
    _shutdown(children)
    kafka.stop()
    print("cfn run: stopped", flush=True)
    return code


def _spawn(env: dict[str, str], logs: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Start `cfn ingest` and `cfn worker`, each logging to its file under `logs`."""
    logs.mkdir(parents=True, exist_ok=True)
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("ingest", "worker"):
        with (logs / f"{name}.log").open("ab") as log:
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "cfn", name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    return children


def _wait_ready(env: dict[str, str], children: dict[str, subprocess.Popen[bytes]]) -> bool:
    ingest = f"http://127.0.0.1:{env['CFN_INGEST_ADMIN_PORT']}/readyz"
    worker = f"http://127.0.0.1:{env['CFN_WORKER_METRICS_PORT']}/readyz"
    return _wait_http(ingest, children["ingest"]) and _wait_http(worker, children["worker"])


def _print_endpoints(env: dict[str, str], bootstrap: str, secret: str, logs: Path) -> None:
    base = f"http://{env['CFN_INGEST_HOST']}:{env['CFN_INGEST_PORT']}"
    metrics_port = env["CFN_WORKER_METRICS_PORT"]
    print(
        "\ncfn is running:\n"
        f"  POST webhooks to  {base}/webhooks/cloudflare\n"
        f"  with header       cf-webhook-auth: {secret}\n"
        f"  ingest metrics    http://127.0.0.1:{env['CFN_INGEST_ADMIN_PORT']}/metrics\n"
        f"  worker metrics    http://127.0.0.1:{metrics_port}/metrics\n"
        f"  Kafka             {bootstrap} (topics cfn.raw, cfn.events, "
        "cfn.incidents, cfn.rates, cfn.dlq)\n"
        f"  logs              {logs}/\n"
        "  try: cfn send tests/data/examples/  then  cfn tail incidents --from-beginning\n"
        "Ctrl-C stops everything.",
        flush=True,
    )


def _shutdown(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every child that still runs, then wait (SIGKILL after 30 s)."""
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
