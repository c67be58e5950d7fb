"""Declares the Faust app, its topics and its tables; `agents.py` makes them act."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from processors.eos import CHANGELOG_SOURCES, source_partition_transactions
from processors.settings import WorkerSettings

OUTPUT_ROLES = ("events", "incidents", "rates", "dlq", "rate-input", "ticks")
TABLES = ("dedup", "incidents", "rates")


@dataclass
class CfnApp:
    """The app and everything declared on it, built from settings (tests build several)."""

    settings: WorkerSettings
    app: Any  # faust.App: untyped
    raw: Any  # cfn.raw + cfn.ticks, read as raw bytes
    rate_input: Any
    outputs: dict[str, Any]
    dedup: Any
    incidents: Any
    rates: Any


def build_app(settings: WorkerSettings) -> CfnApp:
    """Create the Faust app with explicit settings only.

    `env={}` stops Faust from reading its unprefixed variables (BROKER_URL, WEB_PORT, ...),
    which would otherwise silently override these arguments: cfn is configured by CFN_* alone.
    """
    source_partition_transactions()
    n = settings.partitions
    app = faust.App(
        settings.app_id,
        env={},
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        processing_guarantee=settings.processing_guarantee,
        broker_commit_interval=settings.commit_interval,
        # A crashed worker's partitions move after this long, not Faust's default 60 s.
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 5),
        topic_partitions=n,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type="lz4",
        table_standby_replicas=0,
        web_enabled=False,
        datadir=settings.data_dir,
        stream_wait_empty=False,
    )
    # Faust's Consumer copies app.in_transaction once, when it is created, and Faust's Worker
    # sets in_worker (part of in_transaction) only later, in on_start: left alone, the
    # consumer reads uncommitted data (aborted table writes come back on recovery) and commits
    # offsets outside the transactions. This app only ever runs as a worker, so say so now.
    app.in_worker = True
    raw = app.topic(
        settings.topic("raw"), settings.topic("ticks"), key_serializer="raw", value_serializer="raw"
    )
    rate_input = app.topic(
        settings.topic("rate-input"), partitions=n, key_serializer="raw", value_serializer="raw"
    )
    outputs = {
        role: app.topic(
            settings.topic(role), partitions=n, key_serializer="raw", value_serializer="raw"
        )
        for role in OUTPUT_ROLES
    }

    def table(name: str) -> Any:
        # Keys and values go through the app's default json codec (orjson underneath).
        return app.Table(name, partitions=n)

    sources = {"dedup": settings.topic("raw"), "incidents": settings.topic("raw")}
    sources["rates"] = settings.topic("rate-input")
    for name in TABLES:
        CHANGELOG_SOURCES[f"{settings.app_id}-{name}-changelog"] = sources[name]
    return CfnApp(
        settings=settings,
        app=app,
        raw=raw,
        rate_input=rate_input,
        outputs=outputs,
        dedup=table("dedup"),
        incidents=table("incidents"),
        rates=table("rates"),
    )
