"""The sending half of the end-to-end bench: START/END pairs POSTed at a fixed rate.

Runs as its own process, apart from the consumer that notes when each incident record appears
(tests/bench/e2e_bench.py): in one event loop, sending ~3,000 POST/s and reading as many records
saturated the loop, whose lag then counted as latency. Times are wall-clock (time.time()), so the
two processes' times compare on one machine. Writes one JSON object to OUT (over a megabyte at
the loaded rate: a file, as a pipe once cut it short):
{"sent": {"<i>:<state>": t}, "answered": {...}, "failures": {"<status or error>": n}}.

Run: python -m tests.bench.e2e_client URL RATE SECONDS TOKEN OUT [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from cfn.schemas import jsonio
from tests.bench.core import SECRET
from tests.bench.load import webhook_body

EVENTS = (("ALERT_STATE_EVENT_START", "open"), ("ALERT_STATE_EVENT_END", "resolved"))


def correlation_id(token: str, i: int) -> str:
    return f"e2e-{token}-{i}"


async def run(
    url: str, rate: float, seconds: float, token: str, connections: int
) -> dict[str, Any]:
    pairs = max(1, int(rate * seconds / 2))
    base_ts = int(time.time()) - 600
    bodies = [
        [
            webhook_body(correlation_id(token, i), event, base_ts + (0 if state == "open" else 120))
            for event, state in EVENTS
        ]
        for i in range(pairs)
    ]
    headers = {"content-type": "application/json", "cf-webhook-auth": SECRET}
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    failures: dict[str, int] = {}

    async def pair(session: aiohttp.ClientSession, i: int) -> None:
        for (_event, state), body in zip(EVENTS, bodies[i], strict=True):
            key = f"{i}:{state}"
            sent[key] = time.time()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            if status != 202:
                failures[str(status)] = failures.get(str(status), 0) + 1
                return
            answered[key] = time.time()

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        interval = 2.0 / rate
        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(pairs):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(pair(session, i)))
        await asyncio.gather(*tasks)
    return {"sent": sent, "answered": answered, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.e2e_client")
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("token")
    parser.add_argument("out", type=Path)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    result = uvloop.run(run(args.url, args.rate, args.seconds, args.token, args.connections))
    args.out.write_bytes(jsonio.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
