"""`cfn run` / `make run`: a local broker, the ingest and the worker, in the foreground."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cfn.broker import BrokerError, LocalKafka

LOCAL = Path(".local")


def _secret() -> str:
    """CFN_INGEST_SECRET, else one generated once and kept in .local/secret (mode 600)."""
    given = os.environ.get("CFN_INGEST_SECRET")
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
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    kafka = LocalKafka(data_dir=LOCAL / "kafka", port=port)
    print(f"cfn run: starting Apache Kafka on 127.0.0.1:{port} (data in {LOCAL}/kafka)", flush=True)
    try:
        kafka.start()
    except BrokerError as exc:
        kafka.stop()
        print(f"cfn run: {exc}", file=sys.stderr)
        return 2

    secret = _secret()
    env = {
        **os.environ,
        "CFN_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "CFN_INGEST_SECRET": secret,
    }
    ingest_port = env.setdefault("CFN_INGEST_PORT", "8080")
    host = env.setdefault("CFN_INGEST_HOST", "127.0.0.1")
    metrics_port = env.setdefault("CFN_WORKER_METRICS_PORT", "9464")
    logs = LOCAL / "logs"
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
    base = f"http://{host}:{ingest_port}"
    ready = _wait_http(f"{base}/readyz", children["ingest"]) and _wait_http(
        f"http://127.0.0.1:{metrics_port}/readyz", children["worker"]
    )
    if ready:
        print(
            "\ncfn is running:\n"
            f"  POST webhooks to  {base}/webhooks/cloudflare\n"
            f"  with header       cf-webhook-auth: {secret}\n"
            f"  ingest metrics    {base}/metrics\n"
            f"  worker metrics    http://127.0.0.1:{metrics_port}/metrics\n"
            f"  Kafka             {kafka.bootstrap} (topics cfn.raw, cfn.events, "
            "cfn.incidents, cfn.rates, cfn.dlq)\n"
            f"  logs              {logs}/\n"
            "  try: cfn send tests/data/examples/  then  cfn tail incidents --from-beginning\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
    else:
        print(f"cfn run: a service did not become ready; see {logs}/", file=sys.stderr)
        stopping = True
    code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(
                    f"cfn run: {name} exited ({child.returncode}); see {logs}/{name}.log",
                    file=sys.stderr,
                )
                stopping, code = True, 1
        time.sleep(0.5)
    print("cfn run: stopping", flush=True)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
    kafka.stop()
    print("cfn run: stopped", flush=True)
    return code
