"""The walkthrough of docs/cloudflare.md, for real: a local broker, an ingest and a worker, the
tests' fake Cloudflare API, and the `cfn` commands an operator would type, each printed with
its output and exit code. `python -m tests.cloudflare_walkthrough` (about two minutes)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio
from cfn.shell.broker import LocalKafka
from tests.conftest import free_port_block
from tests.fake_cloudflare import FakeCloudflare
from tests.kafka_util import run, wait_caught_up
from tests.services import Process, cfn_env, metric_value, start_ingest, start_worker

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
TOKEN = "cf-walkthrough-token-0123456789abcdef"
PREFIX = "cfn."
TYPE = "health_check_status_notification"


def say(text: str) -> None:
    print(f"\n# {text}", flush=True)


class Walk:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = LocalKafka(data_dir=tmp / "kafka", port=free_port_block(1))
        self.broker.start()
        self.fake = FakeCloudflare()
        self.fake.start()
        self.fake.account(ACCOUNT, TOKEN)
        (tmp / "acme.token").write_text(TOKEN + "\n")
        self.secrets = tmp / "secrets.json"
        cloudflare = {"account_id": ACCOUNT, "api_token_file": str(tmp / "acme.token")}
        entry = {"secrets": ["acme-first-secret-0123456789"], "cloudflare": cloudflare}
        self.secrets.write_bytes(jsonio.dumps({"acme": entry}))
        self.worker = start_worker(tmp, self.broker.bootstrap, PREFIX, "cfn")
        self.ingest = self.start_ingest()
        self.env = cfn_env(
            {
                "CFN_INGEST_SECRETS_FILE": str(self.secrets),
                "CFN_CLOUDFLARE_API_BASE": self.fake.base,
                "CFN_KAFKA_BOOTSTRAP": self.broker.bootstrap,
                "CFN_TOPIC_PREFIX": PREFIX,
            }
        )

    def start_ingest(self) -> Process:
        env = {"CFN_INGEST_SECRETS_FILE": str(self.secrets)}
        return start_ingest(self.tmp, self.broker.bootstrap, PREFIX, env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingest.port}/webhooks/cloudflare"

    def cfn(self, *args: str) -> None:
        print("$ cfn " + " ".join(args), flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "cfn", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        print(done.stdout + done.stderr, end="", flush=True)
        print(f"[exit {done.returncode}]", flush=True)

    def stop(self) -> None:
        self.ingest.stop()
        self.worker.stop()
        self.fake.stop()
        self.broker.stop()
        assert self.fake.violations == [], self.fake.violations
        assert TOKEN not in self.ingest.output + self.worker.output


def walk(walk: Walk, grace: int) -> None:
    fake = walk.fake
    say("connect, then connect again")
    connect = ("cloudflare", "connect", "--tenant", "acme", "--alert-types", TYPE, "--settle", "1s")
    walk.cfn(*connect, "--url", walk.url)
    walk.cfn(*connect, "--url", walk.url)
    policy = next(iter(fake.accounts[ACCOUNT].policies))
    body: dict[str, Any] = {
        "name": "origin health",
        "text": "Origin example.com is unhealthy",
        "ts": int(time.time()),
        "account_id": ACCOUNT,
        "policy_id": policy,
        "policy_name": f"cfn-acme-{TYPE}",
        "alert_type": TYPE,
        "alert_correlation_id": "c-1",
        "alert_event": "ALERT_STATE_EVENT_START",
        "data": {"zone_name": "example.com"},
    }
    say("Cloudflare delivers an alert")
    print("fake Cloudflare: delivery answered", fake.deliver(ACCOUNT, body), flush=True)
    walk.cfn("cloudflare", "status")
    say("the ingest is down: Cloudflare's next delivery fails")
    walk.ingest.stop()
    lost = {**body, "text": "Origin shop.example.com is unhealthy", "alert_correlation_id": "c-2"}
    print("fake Cloudflare: delivery answered", fake.deliver(ACCOUNT, lost), flush=True)
    walk.cfn("cloudflare", "status")
    say("the ingest is back, on another port here: point the destination at it")
    walk.ingest = walk.start_ingest()
    walk.cfn(*connect, "--url", walk.url)
    say(f"after the grace period ({grace}s here; keep the default 30m in production)")
    time.sleep(grace + 5)
    reconcile = ("reconcile", "--since", "3h", "--grace", f"{grace}s")
    walk.cfn(*reconcile)
    walk.cfn(*reconcile, "--backfill")
    walk.cfn(*reconcile, "--backfill")
    say("Cloudflare's original comes after all, after its backfill")
    print("fake Cloudflare: delivery answered", fake.deliver(ACCOUNT, lost, record=False))
    run(wait_caught_up(walk.broker.bootstrap, "cfn", PREFIX + "raw", timeout=60))
    sample = f'cfn_duplicates_total{{alert_type="{TYPE}"}}'
    print(f"worker: {sample} {metric_value(walk.worker.port, sample)}", flush=True)
    walk.cfn("tail", "events", "--from-beginning", "--idle", "3")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cfn-walkthrough-") as tmp:
        current = Walk(Path(tmp))
        try:
            walk(current, grace=60)
        finally:
            current.stop()


if __name__ == "__main__":
    main()
