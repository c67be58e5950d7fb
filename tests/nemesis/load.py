"""The nemesis's load: several tenants' START/END pairs, one-offs and redeliveries, sent open-loop.

Like tests/bench/rate_client.py, each send happens at its planned time whatever became of the
earlier ones (no coordinated omission), from a process of its own; unlike it, every answer is
written down (body, tenant, status, request id, times), for the checker. A non-2xx answer or
no answer is sent again after its Retry-After (at least 1 s), up to three times, as
Cloudflare does; the retry goes to the other ingest when there was no answer at all.

Run: python -m tests.nemesis.load PLAN.json ANSWERS.jsonl PORT [PORT ...]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cfn.schemas import jsonio

WEBHOOK = "/webhooks/cloudflare"
TYPES = (
    "health_check_status_notification",
    "real_origin_monitoring",
    "advanced_ddos_attack_l7_alert",
    "workers_alert",
)
RETRIES = 3


@dataclass(frozen=True)
class Send:
    """One planned delivery: at `at` seconds after the start, `body` for `tenant`."""

    at: float
    tenant: str
    body: str
    kind: str  # start, end, one_off, redelivery


def plan(seed: int, seconds: float, rate: float, tenants: list[str], epoch: int) -> list[Send]:
    """The deliveries of one run, from its seed: about `rate` a second for `seconds`.

    Half are incidents (a START, its END 2-20 s later, both with `ts` at their send time from
    `epoch`), a third one-offs (no correlation id), and about one in seven of all bodies is
    redelivered with the same bytes 0.5-10 s later. Every body is unique but for redeliveries.
    """
    rng = random.Random(seed)
    sends: list[Send] = []
    n = int(seconds * rate / 1.5)
    for i in range(n):
        at = round(i * seconds / n, 3)
        tenant = rng.choice(tenants)
        account = f"acc-{rng.randrange(20)}"
        alert_type = rng.choice(TYPES)
        common: dict[str, Any] = {
            "name": "nemesis",
            "account_id": account,
            "policy_id": f"pol-{i % 7}",
            "policy_name": "nemesis policy",
            "alert_type": alert_type,
            "data": {"zone_name": f"z{rng.randrange(50)}.example"},
        }
        if rng.random() < 0.6:
            corr = f"nm-{seed}-{i}"
            end_at = at + round(rng.uniform(2, 20), 3)
            start = {
                **common,
                "alert_correlation_id": corr,
                "alert_event": "ALERT_STATE_EVENT_START",
            }
            end = {**common, "alert_correlation_id": corr, "alert_event": "ALERT_STATE_EVENT_END"}
            start.update(ts=epoch + int(at), text=f"start {i}")
            end.update(ts=epoch + int(end_at), text=f"end {i}")
            bodies = [(at, start, "start"), (end_at, end, "end")]
        else:
            one_off = {**common, "ts": epoch + int(at), "text": f"one-off {i}"}
            bodies = [(at, one_off, "one_off")]
        for when, body, kind in bodies:
            if when >= seconds:
                continue
            text = jsonio.dumps(body).decode()
            sends.append(Send(when, tenant, text, kind))
            if rng.random() < 0.15:
                again = when + round(rng.uniform(0.5, 10), 3)
                if again < seconds:
                    sends.append(Send(again, tenant, text, "redelivery"))
    return sorted(sends, key=lambda s: s.at)


@dataclass
class Answer:
    """One HTTP attempt and its outcome (status 0: no answer; error names why)."""

    item: int
    attempt: int
    ingest: int
    tenant: str
    body: str
    status: int
    request_id: str | None
    retry_after: str | None
    sent: float  # wall clock, seconds
    done: float
    error: str | None


async def run(sends: list[Send], secrets: dict[str, str], ports: list[int]) -> list[Answer]:
    answers: list[Answer] = []

    async def attempt(session: aiohttp.ClientSession, item: int, send: Send) -> None:
        ingest = item % len(ports)
        for number in range(RETRIES + 1):
            headers = {"content-type": "application/json", "cf-webhook-auth": secrets[send.tenant]}
            url = f"http://127.0.0.1:{ports[ingest]}{WEBHOOK}"
            sent = time.time()
            status, request_id, retry_after, error = 0, None, None, None
            try:
                async with session.post(url, data=send.body.encode(), headers=headers) as resp:
                    data = await resp.read()
                    status, retry_after = resp.status, resp.headers.get("retry-after")
                    if 200 <= status < 300:
                        request_id = jsonio.loads(data).get("id")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            answers.append(
                Answer(item, number, ingest, send.tenant, send.body, status, request_id,
                       retry_after, sent, time.time(), error)
            )  # fmt: skip
            if 200 <= status < 300:
                return
            if status == 0:
                ingest = (ingest + 1) % len(ports)  # a balancer sends it elsewhere
            wait = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
            await asyncio.sleep(max(1.0, wait))

    connector = aiohttp.TCPConnector(limit=128)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.monotonic()
        for item, send in enumerate(sends):
            delay = start + send.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(attempt(session, item, send)))
        await asyncio.gather(*tasks)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("plan", type=Path, help="JSON: {secrets: {tenant: secret}, sends: [...]}")
    parser.add_argument("answers", type=Path, help="where to write one JSON answer per line")
    parser.add_argument("ports", type=int, nargs="+", help="the ingests' webhook ports")
    args = parser.parse_args()
    planned = jsonio.loads(args.plan.read_bytes())
    sends = [Send(**s) for s in planned["sends"]]
    answers = asyncio.run(run(sends, planned["secrets"], args.ports))
    with args.answers.open("w") as out:
        for answer in answers:
            out.write(jsonio.dumps(asdict(answer)).decode() + "\n")
    sys.stdout.write(f"{len(answers)} answers\n")


if __name__ == "__main__":
    main()
