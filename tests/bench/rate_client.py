"""A fixed-rate (open-loop) HTTP client: latency at a chosen request rate, not at saturation.

wrk2 is not installed here, so this does its job: requests are scheduled at fixed intervals,
and each latency is measured from the *scheduled* send time, so a stalled server is charged
for the requests it delayed (no coordinated omission). Runs as its own process so that its
CPU use does not share a GIL with anything else; prints one JSON object on stdout.

Run: python -m tests.bench.rate_client URL RATE SECONDS [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import uvloop

from cfn.schemas import jsonio
from tests.bench.core import SECRET, percentile
from tests.bench.load import webhook_body


async def run(url: str, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    count = max(1, int(rate * seconds))
    template = webhook_body("RATE-MARK")
    bodies = [template.replace(b"RATE-MARK", f"rate-{i}".encode()) for i in range(count)]
    headers = {"content-type": "application/json", "cf-webhook-auth": SECRET}
    corrected: list[float] = []  # from the scheduled time: what a sender would observe
    service: list[float] = []  # from the actual send: the server's share
    statuses: dict[str, int] = {}

    async def one(session: aiohttp.ClientSession, scheduled: float, body: bytes) -> None:
        sent = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                key = str(resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            key = type(exc).__name__
        done = time.perf_counter()
        statuses[key] = statuses.get(key, 0) + 1
        if key.startswith("2"):
            corrected.append((done - scheduled) * 1000)
            service.append((done - sent) * 1000)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open the connections first, so that the measured part does not pay for handshakes.
        ready_url = url.rsplit("/", 2)[0] + "/readyz"

        async def warm() -> None:
            async with session.get(ready_url) as resp:
                await resp.read()

        await asyncio.gather(*(warm() for _ in range(connections)), return_exceptions=True)
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter() + 0.05
        interval = 1.0 / rate
        for i, body in enumerate(bodies):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, scheduled, body)))
        sending_done = time.perf_counter()
        await asyncio.gather(*tasks)
    elapsed = sending_done - start
    ok = len(corrected)
    return {
        "target_rate": rate,
        "sent": count,
        "ok": ok,
        "statuses": statuses,
        "achieved_send_rate": count / elapsed if elapsed > 0 else rate,
        "p50_ms": percentile(corrected, 50),
        "p99_ms": percentile(corrected, 99),
        "service_p50_ms": percentile(service, 50),
        "service_p99_ms": percentile(service, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    result = uvloop.run(run(args.url, args.rate, args.seconds, args.connections))
    sys.stdout.write(jsonio.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
