"""Running `cfn worker`: topics, the engine, and the metrics/health HTTP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import uvloop
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cfn import internals
from cfn.access import AccessDenied, denial, diagnose
from cfn.config import TABLES, ConfigError, changelog_topic, topic_names
from cfn.health import Reachability, quiet_client_logs
from cfn.processors import identity, incident
from cfn.processors.clock import wall_clock
from cfn.processors.engine import ChangelogTable, Engine
from cfn.processors.metrics import WorkerMetrics
from cfn.processors.pipeline import Pipeline
from cfn.processors.settings import WorkerSettings
from cfn.runtime import tune_gc
from cfn.topics import ensure_topics
from cfn.version import version

log = logging.getLogger("cfn.worker")
START_RETRY_MAX = 10.0  # seconds: the longest wait between two attempts to start


def build(settings: WorkerSettings, registry: CollectorRegistry) -> Engine:
    """The engine with a pipeline over its changelog-backed tables."""
    tables = changelog_tables()
    pipeline = Pipeline(
        settings,
        tables["dedup"],
        tables["incidents"],
        tables["rates"],
        WorkerMetrics.create(registry),
        wall_clock,
        retention_store=tables["state-retention"],
        anomaly_store=tables["anomalies"],
        flap_store=tables["flaps"],
    )
    return Engine(settings, pipeline, tables)


def changelog_tables() -> dict[str, ChangelogTable]:
    """The worker's tables by name. The incidents table has a changelog format of its own
    (processors/incident.py); the others write their values as JSON."""
    tables = {}
    for name in TABLES:
        if name == "incidents":
            tables[name] = ChangelogTable(name, incident.encode, incident.decode)
        else:
            tables[name] = ChangelogTable(name)
    return tables


def metrics_app(
    registry: CollectorRegistry,
    engine: Engine,
    reachability: Reachability,
    stopping: asyncio.Event,
) -> web.Application:
    """/metrics, /healthz and /readyz. Ready: the engine has its state, Kafka answers, and the
    worker is not stopping (once told to stop it no longer probes Kafka, and its last commit
    may wait on it)."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready = engine.ready and reachability.up is True and not stopping.is_set()
        status = "stopping" if stopping.is_set() else "ready" if ready else "not_ready"
        return web.json_response(
            {
                "status": status,
                "processed": engine.processed,
                "partitions": sorted(engine.tasks),
                "kafka": "reachable" if reachability.up else "unreachable",
            },
            status=200 if ready else 503,
        )

    http = web.Application()
    http.router.add_get("/metrics", metrics)
    http.router.add_get("/healthz", healthz)
    http.router.add_get("/readyz", readyz)
    return http


def run() -> int:
    """Foreground entry for `cfn worker`; SIGINT/SIGTERM stop it cleanly. The command line
    has configured logging (cfn/logs.py), so every line, the fatal ones too, is a log line."""
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        internals.check_versions()
    except internals.InternalsError as exc:
        log.error("%s", exc)
        return 2
    log.info("cfn worker %s", version())
    tune_gc()
    quiet_client_logs()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except (KafkaUnreachable, AccessDenied) as exc:
        log.error("%s", exc)
        return 1
    return 0


class KafkaUnreachable(Exception):
    pass


def claim_identity(settings: WorkerSettings) -> tuple[WorkerSettings, identity.Claim | None]:
    """The settings with the worker's id: CFN_WORKER_ID, else the one kept in a slot of
    CFN_STATE_DIR (whose lock the returned claim holds), else a random one."""
    if settings.transactions != "worker" or settings.worker_id:
        return settings, None
    try:
        claim = identity.claim(Path(settings.state_dir), settings.app_id)
    except identity.IdentityError as exc:
        worker_id = identity.new_worker_id()
        log.warning(
            "worker id %s, random: %s (a restart will not abort this worker's open transaction;"
            " set CFN_STATE_DIR or CFN_WORKER_ID)",
            worker_id,
            exc,
        )
        return replace(settings, worker_id=worker_id), None
    log.info(
        "worker id %s (%s slot %d of %s)",
        claim.worker_id,
        "kept in" if claim.reused else "new in",
        claim.slot,
        settings.state_dir,
    )
    return replace(settings, worker_id=claim.worker_id), claim


async def serve(settings: WorkerSettings) -> None:
    await _ensure(settings)
    settings, claim = claim_identity(settings)
    try:
        await _serve(settings)
    finally:
        if claim is not None:
            claim.release()


async def _serve(settings: WorkerSettings) -> None:
    registry = CollectorRegistry()
    engine = build(settings, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stopper(stop, signum, settings.shutdown_timeout))
    reachability = Reachability(log, registry)
    app = metrics_app(registry, engine, reachability, stop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    await site.start()
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    probe: asyncio.Task[None] | None = None
    try:
        if not await start_engine(engine, stop):
            return
        probe = asyncio.create_task(watch_kafka(engine, reachability, stop))
        await engine.run(stop)
        if engine.denied is not None:
            raise engine.denied
    finally:
        if probe is not None:
            probe.cancel()
        await runner.cleanup()


async def start_engine(engine: Engine, stop: asyncio.Event) -> bool:
    """Start the engine, again and again while Kafka does not answer (it can go away between
    the topics' check and the start): one line when a start fails for a new reason, one when
    it succeeds after failing. False if the worker was told to stop first; a refusal (an ACL)
    is raised."""
    failed, reason = 0, ""
    while not stop.is_set():
        try:
            await engine.start()
        except Exception as exc:
            refused = denial(exc, "worker")
            if refused is not None:
                raise refused from None
            if not isinstance(exc, KafkaError | OSError | TimeoutError):
                raise  # not Kafka's absence: a bug, not retried
            failed += 1
            if type(exc).__name__ != reason:
                reason = type(exc).__name__
                log.warning("could not start (%s: %s); trying again", reason, exc)
            await engine.undo_start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(START_RETRY_MAX, float(failed)))
            continue
        if failed:
            log.info("started after %d failed attempts", failed)
        return True
    return False


def _stopper(stop: asyncio.Event, signum: int, timeout: float) -> Callable[[], None]:
    """The handler of `signum`: the first signal stops the worker cleanly, with a deadline;
    past it, or at a second signal, the process exits at once. A clean stop waits for Kafka
    (the last commit, leaving the group), and aiokafka's consumer waits for a coordinator for
    ever; a transaction left open is aborted by the next owner, so exactly-once holds."""
    name = signal.Signals(signum).name

    def handle() -> None:
        if stop.is_set():
            log.warning("%s again; exiting now", name)
            os._exit(1)
        log.info("%s: stopping (at most %.0fs)", name, timeout)
        stop.set()
        deadline = threading.Timer(timeout, _give_up, (timeout,))
        deadline.daemon = True
        deadline.start()

    return handle


def _give_up(timeout: float) -> None:
    log.error("not stopped %.0fs after the signal (Kafka unreachable?); exiting now", timeout)
    logging.shutdown()
    os._exit(1)


async def watch_kafka(engine: Engine, reachability: Reachability, stop: asyncio.Event) -> None:
    """Probe Kafka through the worker's consumer once a second: `cfn_kafka_up`, `/readyz`, and
    one log line per change."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(2.0):
                await internals.fetch_metadata(engine.consumer)
            reachability.report(True)
        except Exception as exc:  # any failure to learn metadata means "unreachable"
            reachability.report(False, type(exc).__name__)
        await asyncio.sleep(1.0)


async def _ensure(settings: WorkerSettings) -> None:
    """Create cfn's topics and the changelog, waiting for Kafka if it is not up yet."""
    roles = list(topic_names(settings.topic_prefix).items())
    roles.append(("changelog", changelog_topic(settings.app_id)))
    for attempt in range(120):
        try:
            await ensure_topics(
                settings.bootstrap,
                roles,
                settings.partitions,
                settings.replication,
                security=settings.security,
            )
            return
        except Exception as exc:  # Kafka not reachable yet, or refusing this worker for good
            refused = await diagnose(
                exc, "worker", settings.bootstrap, settings.security, probe_now=attempt % 10 == 0
            )
            if refused is not None:
                raise refused from None
            if attempt % 10 == 0:
                log.warning("waiting for Kafka at %s (%s)", settings.bootstrap, type(exc).__name__)
            await asyncio.sleep(1.0)
    raise KafkaUnreachable(f"Kafka at {settings.bootstrap} did not become reachable")
