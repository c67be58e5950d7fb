"""The pipeline baseline: a bare faust-streaming agent that only iterates and decodes.

Same Faust and aiokafka versions, same topic and partitions as `cfn worker`, Faust's default
processing guarantee (at least once), no tables, no outputs, web server off. It answers
`GET /readyz` with `{"status": "ready", "processed": N}` like the worker, so the bench counts
both the same way.

Run: BENCH_AGENT_BOOTSTRAP=127.0.0.1:9092 BENCH_AGENT_TOPIC=cfn.raw BENCH_AGENT_APP_ID=x \
     BENCH_AGENT_PORT=9470 BENCH_AGENT_DATA_DIR=/tmp/x python -m tests.bench.bare_agent
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust
import orjson
from aiohttp import web


def main() -> None:
    bootstrap = os.environ["BENCH_AGENT_BOOTSTRAP"]
    port = int(os.environ["BENCH_AGENT_PORT"])
    app = faust.App(
        os.environ["BENCH_AGENT_APP_ID"],
        env={},
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.1,  # as cfn's default CFN_COMMIT_INTERVAL
        datadir=os.environ.get("BENCH_AGENT_DATA_DIR", ".local/bare-agent"),
        stream_wait_empty=False,
    )
    topic = app.topic(os.environ["BENCH_AGENT_TOPIC"], key_serializer="raw", value_serializer="raw")
    state = {"processed": 0}

    @app.agent(topic, name="bare")
    async def consume(stream: Any) -> None:
        async for event in stream.events():
            orjson.loads(event.value)
            state["processed"] += 1
            event.ack()

    @app.task
    async def serve() -> None:
        async def readyz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ready", "processed": state["processed"]})

        http = web.Application()
        http.router.add_get("/readyz", readyz)
        runner = web.AppRunner(http, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
