"""Running `cfn worker`: topics, the Faust worker, and the metrics/health HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ingest.topics import ensure_topics
from processors.agents import Runtime, register
from processors.app import TABLES, build_app
from processors.clock import wall_clock
from processors.metrics import WorkerMetrics
from processors.pipeline import Pipeline
from processors.settings import WorkerSettings
from schemas.config import ConfigError

log = logging.getLogger("cfn.worker")
TOPIC_ROLES = ("raw", "dlq", "events", "incidents", "rates", "ticks", "rate-input")


def build(settings: WorkerSettings, registry: CollectorRegistry) -> tuple[Any, Runtime]:
    """The Faust app with its agents wired to a pipeline over its tables."""
    cfn = build_app(settings)
    pipeline = Pipeline(
        settings,
        cfn.dedup,
        cfn.incidents,
        cfn.rates,
        WorkerMetrics.create(registry),
        wall_clock,
    )
    return cfn, register(cfn, pipeline)


def metrics_app(registry: CollectorRegistry, runtime: Runtime) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        app = runtime.cfn.app
        ready = runtime.ready and not app.rebalancing
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "processed": runtime.processed},
            status=200 if ready else 503,
        )

    http = web.Application()
    http.router.add_get("/metrics", metrics)
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    return http


def run() -> int:
    """Foreground entry for `cfn worker`; SIGINT/SIGTERM stop it cleanly."""
    import faust

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        print(f"cfn worker: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_ensure(settings))
    registry = CollectorRegistry()
    cfn, runtime = build(settings, registry)
    app = cfn.app

    @app.task
    async def serve_metrics() -> None:
        runner = web.AppRunner(metrics_app(registry, runtime), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
        await site.start()
        print(
            f"cfn worker: metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    level = os.environ.get("CFN_LOG_LEVEL", "WARNING").upper()
    worker = faust.Worker(app, loglevel=level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


async def _ensure(settings: WorkerSettings) -> None:
    """Create cfn's topics with CFN_PARTITIONS, waiting for Kafka if it is not up yet."""
    roles = [(role, settings.topic(role)) for role in TOPIC_ROLES]
    # Faust would create the changelogs itself, but a worker that sees its first record before
    # their metadata arrives crashes with PartitionsMismatch; creating them first avoids it.
    roles += [("changelog", f"{settings.app_id}-{table}-changelog") for table in TABLES]
    for attempt in range(120):
        try:
            await ensure_topics(
                settings.bootstrap, roles, settings.partitions, settings.replication
            )
            return
        except Exception as exc:  # Kafka not reachable yet
            if attempt % 10 == 0:
                log.warning("waiting for Kafka at %s (%s)", settings.bootstrap, type(exc).__name__)
            await asyncio.sleep(1.0)
    raise SystemExit("cfn worker: Kafka did not become reachable")
