"""`cfn reconcile`: the Notification History of every configured tenant against `cfn.raw`, and
the destinations' delivery health; missed notifications reported, and written with --backfill.

Idempotent through Kafka: what reconcile writes carries the history record's id in a header
(`cfn-history-id`), and each pass reads `cfn.raw` over the same window, so a rerun or a restart
finds its earlier backfills there and writes nothing twice. The body written for one history
record is always the same bytes, so even a second copy would get the same event id (dedup).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from cfn import internals
from cfn.access import denial
from cfn.cloudflare.client import AlertingClient, RetryPolicy
from cfn.cloudflare.connect import find_destination
from cfn.cloudflare.errors import ApiError, CloudflareError
from cfn.cloudflare.match import Outcome, Seen, backfill_body, reconcile
from cfn.cloudflare.metrics import ReconcileMetrics
from cfn.cloudflare.records import Silence, Webhook
from cfn.cloudflare.secretsfile import SecretsFile
from cfn.cloudflare.settings import CloudflareSettings
from cfn.ingest.auth import SecretsError
from cfn.kafka import aiokafka_options
from cfn.partition import default_partitioner
from cfn.schemas import jsonio
from cfn.schemas.history import HISTORY, HISTORY_ID_HEADER, HISTORY_MARK, ORIGIN_HEADER
from cfn.schemas.keys import incident_key

log = logging.getLogger("cfn.reconcile")


@dataclass(frozen=True)
class Window:
    """Which history a pass reads and how it matches.

    Attributes:
        since: the oldest `sent` read (Cloudflare keeps 30 days, 90 on Enterprise).
        grace: a record younger than this is pending: Cloudflare may still be retrying it.
        window: how long after `sent` a delivery may reach cfn and still match.
    """

    since: datetime
    grace: timedelta = timedelta(minutes=30)
    window: timedelta = timedelta(minutes=30)


@dataclass
class TenantResult:
    tenant: str
    destination: Webhook | None = None
    outcome: Outcome = field(default_factory=Outcome)
    written: int = 0
    error: str | None = None
    horizon: datetime | None = None  # the window's start, moved up to what cfn.raw still holds

    def lines(self) -> list[str]:
        if self.error is not None:
            return [f"tenant {self.tenant}: {self.error}"]
        o = self.outcome
        sent = len(o.delivered) + len(o.missed) + len(o.backfilled) + len(o.silenced)
        head = (
            f"tenant {self.tenant}: {sent + len(o.pending)} sent to cfn, {len(o.delivered)} "
            f"delivered, {len(o.missed)} missed, {len(o.silenced)} silenced, {len(o.pending)} "
            f"pending, {len(o.backfilled)} backfilled earlier"
        )
        if self.written:
            head += f", {self.written} backfilled now"
        rows = [head]
        if self.horizon is not None:
            rows.append(
                f"  not compared: history sent before {self.horizon:%Y-%m-%dT%H:%M:%SZ}, "
                "older than cfn.raw holds"
            )
        for record in o.missed:
            rows.append(
                f"  missed: sent {record.sent:%Y-%m-%dT%H:%M:%SZ} {record.alert_type} "
                f"policy {record.name!r} history id {record.id}"
            )
        return rows


async def run_pass(
    settings: CloudflareSettings,
    window: Window,
    *,
    tenants: list[str] | None = None,
    backfill: bool = False,
    metrics: ReconcileMetrics | None = None,
    now: Callable[[], float] = time.time,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen)
) -> list[TenantResult]:
    """One pass over the tenants (all with a Cloudflare account, or those named).

    Raises:
        SecretsError: the secrets file is unusable, or names no such tenant.
    """
    index = SecretsFile(settings.require_secrets_file()).index()
    names = sorted(index.cloudflare) if tenants is None else tenants
    for name in names:
        if name not in index.cloudflare:
            raise SecretsError(f"tenant {name!r} names no Cloudflare account in the secrets file")
    moment = datetime.fromtimestamp(now(), UTC)
    horizon = await raw_horizon(settings, moment)
    raw = await read_raw(settings, window.since - timedelta(minutes=10))
    if raw.horizon is not None:
        horizon = raw.horizon if horizon is None else max(horizon, raw.horizon)
    cut = horizon if horizon is not None and horizon > window.since else None
    if cut is not None:
        # What cfn.raw no longer holds cannot be told from what it never got: not judged.
        log.warning(
            "cfn.raw holds nothing before %s (its retention): older history is not compared",
            f"{cut:%Y-%m-%dT%H:%M:%SZ}",
        )
        window = replace(window, since=cut)
    seen = raw.seen
    results: list[TenantResult] = []
    async with aiohttp.ClientSession() as session:
        for name in names:
            account = index.cloudflare[name]
            client = AlertingClient(
                session, settings.api_base, account.account_id, account.token, retry
            )
            result = TenantResult(name, horizon=cut)
            try:
                await _tenant(client, result, seen.get(name, []), window, moment)
            except (CloudflareError, SecretsError) as exc:
                result.error = str(exc)
                log.error("reconcile of tenant %s failed: %s", name, exc)
            results.append(result)
            if backfill and result.outcome.missed:
                result.written = await write_backfill(settings, name, account.account_id, result)
            if metrics is not None:
                _count(metrics, result)
    return results


async def _tenant(
    client: AlertingClient,
    result: TenantResult,
    seen: list[Seen],
    window: Window,
    moment: datetime,
) -> None:
    hook = await find_destination(client, result.tenant)
    if hook is None:
        raise CloudflareError("no cfn destination in its account (run `cfn cloudflare connect`)")
    result.destination = hook
    mine = {hook.id, hook.url, hook.name} - {None}
    history = [
        record
        async for record in client.history(window.since, per_page=1000)
        if record.mechanism_type == "webhook" and record.mechanism in mine
    ]
    quiet: list[Silence] = []
    if history:
        try:
            quiet = await client.silences()
        except ApiError as exc:
            if exc.status != 404:  # an account without silences: none
                raise
    result.outcome = reconcile(history, seen, quiet, moment, window.grace, window.window)
    for record in result.outcome.missed:
        log.warning(
            "missed: tenant %s, %s sent %s, history id %s: Cloudflare sent it to cfn's "
            "destination and cfn never accepted it",
            result.tenant,
            record.alert_type,
            record.sent,
            record.id,
        )


def _count(metrics: ReconcileMetrics, result: TenantResult) -> None:
    tenant = result.tenant
    metrics.runs.labels(tenant, "error" if result.error else "ok").inc()
    if result.error is not None:
        return
    metrics.last_run.labels(tenant).set(time.time())
    hook = result.destination
    if hook is not None:
        if hook.last_success is not None:
            metrics.last_success.labels(tenant).set(hook.last_success.timestamp())
        if hook.last_failure is not None:
            metrics.last_failure.labels(tenant).set(hook.last_failure.timestamp())
    # A record is counted once per process, however many passes see it.
    for kind, counter, records in (
        ("missed", metrics.missed, result.outcome.missed),
        ("silenced", metrics.silenced, result.outcome.silenced),
    ):
        for record in records:
            if (kind, tenant, record.id) not in metrics.counted:
                metrics.counted.add((kind, tenant, record.id))
                counter.labels(tenant).inc()
    if result.written:
        metrics.backfilled.labels(tenant).inc(result.written)


async def raw_horizon(settings: CloudflareSettings, moment: datetime) -> datetime | None:
    """The oldest time `cfn.raw` is sure to hold everything from, by its `retention.ms`: Kafka
    deletes a segment only once its newest record is older than that. None: kept for ever.

    Raises:
        KafkaError: DESCRIBE_CONFIGS on the topic is refused (`cfn acls --role reconcile`
            grants it), or the topic is missing.
    """
    admin = AIOKafkaAdminClient(**aiokafka_options(settings.bootstrap, settings.security))
    await admin.start()
    try:
        configs = await internals.topic_configs(admin, settings.raw_topic)
    finally:
        await admin.close()
    retention_ms = int(configs.get("retention.ms") or -1)
    return None if retention_ms < 0 else moment - timedelta(milliseconds=retention_ms)


@dataclass
class RawRead:
    """What `cfn.raw` holds since a time: the bodies by tenant, and the horizon, the time of
    a partition's oldest record where older ones that may have been in the span were deleted
    (by size, or by DeleteRecords; None: none was)."""

    seen: dict[str, list[Seen]] = field(default_factory=dict)
    horizon: datetime | None = None


async def read_raw(settings: CloudflareSettings, since: datetime) -> RawRead:
    """Every body of `cfn.raw` accepted since `since`, by tenant, and the horizon."""
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings.bootstrap, settings.security),
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    read = RawRead()
    found = read.seen
    try:
        cluster = await internals.fetch_metadata(consumer)
        partitions = sorted(cluster.partitions_for_topic(settings.raw_topic) or ())
        tps = [TopicPartition(settings.raw_topic, p) for p in partitions]
        if not tps:
            return read
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        start_ms = int(since.timestamp() * 1000)
        first = await consumer.offsets_for_times({tp: start_ms for tp in tps})
        # A partition whose first record in the span is its oldest left, with older ones
        # deleted: those may have been in the span too, so the span starts at that record.
        cut = [
            found_at.timestamp
            for tp, found_at in first.items()
            if found_at is not None and begin[tp] > 0 and found_at.offset == begin[tp]
        ]
        if cut:
            read.horizon = datetime.fromtimestamp(max(cut) / 1000, UTC)
        remaining = {
            tp: end[tp] for tp in tps if first.get(tp) is not None and first[tp].offset < end[tp]
        }
        if not remaining:
            return read
        consumer.assign(list(remaining))
        for tp in remaining:
            consumer.seek(tp, first[tp].offset)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, items in batch.items():
                for record in items:
                    if record.offset >= remaining.get(tp, 0):
                        continue
                    headers = {k: v for k, v in record.headers or ()}
                    tenant = headers.get("cfn-tenant", b"default").decode(errors="replace")
                    received_ms = headers.get("cfn-received-at")
                    ms = int(received_ms) if received_ms else record.timestamp
                    seen = Seen.from_raw(
                        record.value, datetime.fromtimestamp(ms / 1000, UTC), headers
                    )
                    if seen is not None:
                        found.setdefault(tenant, []).append(seen)
            for tp in list(remaining):
                if await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
    finally:
        await consumer.stop()
    return read


async def write_backfill(
    settings: CloudflareSettings, tenant: str, account_id: str, result: TenantResult
) -> int:
    """Write the missed records of `result` into `cfn.raw`, marked as from the history, keyed
    and partitioned as the ingest would key their bodies. Returns how many were written.

    Each backfill is preceded by a copy on every other partition (`cfn-origin: history-mark`),
    which makes no event: its original, keyed by a correlation id the history lacks, may land
    on any partition, and the worker's dedup there must know the backfill to absorb it. The
    copies go first, so a backfill that is in `cfn.raw` (what a rerun looks for) has them all.
    """
    producer = AIOKafkaProducer(
        **aiokafka_options(settings.bootstrap, settings.security),
        acks="all",
        enable_idempotence=True,
        partitioner=default_partitioner,
    )
    await producer.start()
    written = 0
    try:
        partitions = sorted(await producer.partitions_for(settings.raw_topic))
        for record in result.outcome.missed:
            body = backfill_body(record, account_id)
            key = incident_key(tenant, jsonio.loads(body))
            home = default_partitioner(key, partitions, partitions)
            mark = _headers(tenant, HISTORY_MARK, record.id)
            copies = [
                await producer.send(settings.raw_topic, body, key=key, partition=p, headers=mark)
                for p in partitions
                if p != home
            ]
            await asyncio.gather(*copies)
            await producer.send_and_wait(
                settings.raw_topic,
                body,
                key=key,
                partition=home,
                headers=_headers(tenant, HISTORY, record.id),
            )
            written += 1
            log.info("backfilled: tenant %s, history id %s", tenant, record.id)
    finally:
        await producer.stop()
    return written


def _headers(tenant: str, origin: bytes, history_id: str) -> list[tuple[str, bytes]]:
    """The ingest's headers of a raw record, and where it came from."""
    return [
        ("cfn-tenant", tenant.encode()),
        ("cfn-received-at", b"%d" % int(time.time() * 1000)),
        ("cfn-request-id", secrets.token_hex(16).encode()),
        (ORIGIN_HEADER, origin),
        (HISTORY_ID_HEADER, history_id.encode()),
    ]


async def run_every(
    settings: CloudflareSettings,
    window: Window,
    every: float,
    *,
    tenants: list[str] | None,
    backfill: bool,
    metrics: ReconcileMetrics,
    print_line: Callable[[str], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Reconcile every `every` seconds, each pass over the last `window.since`-to-now span of
    the same length as the first, until cancelled. A pass that fails (Kafka or the secrets
    file unavailable) is logged and the next one comes on time; Kafka's refusal of an ACL
    ends it (raised), since no later pass would fare better.
    """
    span = datetime.now(UTC) - window.since
    while True:
        current = Window(datetime.now(UTC) - span, window.grace, window.window)
        try:
            results = await run_pass(
                settings, current, tenants=tenants, backfill=backfill, metrics=metrics
            )
        except (SecretsError, OSError, KafkaError) as exc:
            if isinstance(exc, KafkaError) and denial(exc, "reconcile") is not None:
                raise
            log.error(
                "reconcile pass failed (%s: %s); the next in %gs", type(exc).__name__, exc, every
            )
        else:
            for result in results:
                for line in result.lines():
                    print_line(line)
        await sleep(every)
