"""cfn.cloudflare against a fake Cloudflare API held to Cloudflare's published schemas: the
client (retries, Retry-After, pages, permissions), connect, rotate, status and reconcile, the
last ones against a real ingest and broker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from cfn.cloudflare.client import AlertingClient, RetryPolicy, retry_after
from cfn.cloudflare.connect import Timing, connect, destination_name, rotate
from cfn.cloudflare.errors import ApiError, PermissionDenied
from cfn.cloudflare.match import Seen, backfill_body, reconcile
from cfn.cloudflare.metrics import ReconcileMetrics
from cfn.cloudflare.reconcile import Window, run_every, run_pass
from cfn.cloudflare.records import HistoryRecord, Silence
from cfn.cloudflare.secretsfile import SecretsFile
from cfn.cloudflare.settings import CloudflareSettings
from cfn.partition import partition_for
from cfn.schemas import jsonio
from cfn.schemas.keys import incident_key
from tests.fake_cloudflare import FakeCloudflare
from tests.kafka_util import drain, run, wait_caught_up
from tests.payloads import alert
from tests.records_check import read_checked
from tests.services import Process, start_ingest, start_worker

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
TOKEN = "cf-token-write-never-shown-0123456789"
READ_TOKEN = "cf-token-read-only-0123456789"
FIRST = "acme-first-secret-0123456789"


@pytest.fixture
def fake() -> Iterator[FakeCloudflare]:
    server = FakeCloudflare()
    server.start()
    server.account(ACCOUNT, TOKEN)
    try:
        yield server
        assert server.violations == [], "\n".join(server.violations)
    finally:
        server.stop()


class Sleeps:
    """An injected sleep that records and does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def with_client(
    fake: FakeCloudflare, work: Callable[[AlertingClient], Any], token: str = TOKEN, **kw: Any
) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as session:
            client = AlertingClient(session, fake.base, ACCOUNT, lambda: token, **kw)
            return await work(client)

    return asyncio.run(go())


# ---- the client -----------------------------------------------------------------------------


def test_a_429_and_a_503_are_retried_with_backoff_honouring_retry_after(
    fake: FakeCloudflare,
) -> None:
    fake.faults = [(429, "7"), (503, None), (502, None)]
    sleeps = Sleeps()
    hooks = with_client(fake, lambda c: c.webhooks(), sleep=sleeps)
    assert hooks == []
    assert len(sleeps.waits) == 3
    assert sleeps.waits[0] >= 7  # Retry-After honoured
    assert 1.0 <= sleeps.waits[1] <= 1.5 and 2.0 <= sleeps.waits[2] <= 3.0  # doubling backoff


def test_retries_end_with_an_error_naming_the_call(fake: FakeCloudflare) -> None:
    fake.faults = [(500, None)] * 3
    sleeps = Sleeps()
    with pytest.raises(ApiError, match=r"GET /destinations/webhooks: HTTP 500: 10500") as caught:
        with_client(fake, lambda c: c.webhooks(), sleep=sleeps, retry=RetryPolicy(attempts=3))
    assert caught.value.retriable and len(sleeps.waits) == 2


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert retry_after("12", 0) == 12
    assert retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40) == 60
    assert retry_after("soon", 0) is None and retry_after(None, 0) is None


def test_a_token_without_write_permission_gets_an_error_naming_the_permission(
    fake: FakeCloudflare,
) -> None:
    fake.account(ACCOUNT, READ_TOKEN, "read")
    assert with_client(fake, lambda c: c.webhooks(), token=READ_TOKEN) == []
    with pytest.raises(PermissionDenied) as caught:
        with_client(
            fake, lambda c: c.create_webhook("n", "https://x.test/", "s" * 20), token=READ_TOKEN
        )
    message = str(caught.value)
    assert "'Notifications Write' permission" in message and "10000" in message
    assert READ_TOKEN not in message
    with pytest.raises(PermissionDenied, match="'Notifications Read'"):
        with_client(fake, lambda c: c.webhooks(), token="unknown-token-0123456789")


def test_the_history_is_read_page_by_page(fake: FakeCloudflare) -> None:
    account = fake.accounts[ACCOUNT]
    sent = datetime.now(UTC) - timedelta(hours=1)
    for i in range(23):
        moment = (sent + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        account.history.append(fake.history_record("hook", {"text": f"n{i}"}, moment))

    async def read(client: AlertingClient) -> list[HistoryRecord]:
        return [r async for r in client.history(sent - timedelta(minutes=1), per_page=5)]

    records = with_client(fake, read)
    assert [r.alert_body for r in records] == [f"n{i}" for i in range(23)]
    pages = [q["page"] for m, p, q in fake.calls if p.endswith("/history")]
    assert pages == ["1", "2", "3", "4", "5"]


# ---- the match (pure) -------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(i: int, sent: datetime, text: str = "origin down", policy: str = "p1") -> HistoryRecord:
    return HistoryRecord(
        f"h{i}", text, "health_check_status_notification", "", "hook", "webhook", "n", policy, sent
    )


def seen(received: datetime, text: str = "origin down", history_id: str | None = None) -> Seen:
    return Seen(text, "health_check_status_notification", "p1", received, history_id)


def test_the_match_sorts_delivered_missed_silenced_pending_and_backfilled() -> None:
    hour = timedelta(hours=1)
    history = [
        record(1, NOW - 3 * hour),  # delivered 20 s later
        record(2, NOW - 3 * hour + timedelta(minutes=1)),  # the same text again: a second body
        record(3, NOW - 2 * hour),  # never arrived: missed
        record(4, NOW - 2 * hour, policy="quiet"),  # silenced policy
        record(5, NOW - timedelta(minutes=5)),  # within the grace period
        record(6, NOW - 5 * hour),  # written earlier by reconcile
    ]
    bodies = [seen(NOW - 3 * hour + timedelta(seconds=20)), seen(NOW - 5 * hour, history_id="h6")]
    silences = [Silence("s", "quiet", NOW - 3 * hour, NOW - hour)]
    outcome = reconcile(
        history, bodies, silences, NOW, timedelta(minutes=30), timedelta(minutes=30)
    )
    assert [r.id for r in outcome.delivered] == ["h1"]
    assert [r.id for r in outcome.missed] == ["h2", "h3"]  # one body serves one record
    assert [r.id for r in outcome.silenced] == ["h4"]
    assert [r.id for r in outcome.pending] == ["h5"]
    assert [r.id for r in outcome.backfilled] == ["h6"]


def test_a_backfills_copy_for_another_partition_is_no_body_to_match() -> None:
    body = backfill_body(record(1, NOW), ACCOUNT)
    assert (
        Seen.from_raw(body, NOW, {"cfn-origin": b"history-mark", "cfn-history-id": b"h1"}) is None
    )
    backfill = Seen.from_raw(body, NOW, {"cfn-origin": b"history", "cfn-history-id": b"h1"})
    assert backfill is not None and backfill.history_id == "h1"
    webhook = Seen.from_raw(body, NOW, {"cfn-history-id": b"h1"})  # only with its origin
    assert webhook is not None and webhook.history_id is None


def test_a_backfill_body_is_the_same_bytes_for_the_same_record() -> None:
    one = backfill_body(record(1, NOW), ACCOUNT)
    assert one == backfill_body(record(1, NOW), ACCOUNT)
    assert jsonio.loads(one) == {
        "account_id": ACCOUNT,
        "alert_type": "health_check_status_notification",
        "cfn_history_id": "h1",
        "name": "n",
        "policy_id": "p1",
        "text": "origin down",
        "ts": int(NOW.timestamp()),
    }


class _Stop(Exception):
    pass


def _passes(n: int) -> Callable[[float], Any]:
    """An injected sleep for run_every that ends it at the `n`-th wait."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == n:
            raise _Stop

    return sleep


def _secrets(tmp_path: Path) -> Path:
    token_file = tmp_path / "acme.token"
    token_file.write_text(TOKEN + "\n")
    path = tmp_path / "secrets.json"
    account = {"account_id": ACCOUNT, "api_token_file": str(token_file)}
    path.write_bytes(jsonio.dumps({"acme": {"secrets": [FIRST], "cloudflare": account}}))
    return path


def test_reconcile_every_outlives_a_kafka_it_cannot_reach(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = CloudflareSettings(secrets_file=_secrets(tmp_path), bootstrap="127.0.0.1:1")
    metrics = ReconcileMetrics.create(CollectorRegistry())
    window = Window(since=datetime.now(UTC) - timedelta(hours=1))
    lines: list[str] = []
    with caplog.at_level("ERROR", logger="cfn.reconcile"), pytest.raises(_Stop):
        asyncio.run(
            run_every(
                settings,
                window,
                60.0,
                tenants=None,
                backfill=False,
                metrics=metrics,
                print_line=lines.append,
                sleep=_passes(3),
            )
        )
    failed = [r.getMessage() for r in caplog.records if "reconcile pass failed" in r.getMessage()]
    assert len(failed) == 3 and "KafkaConnectionError" in failed[0], failed
    assert "the next in 60s" in failed[0] and lines == []


def test_reconcile_every_ends_on_a_refused_acl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise TopicAuthorizationFailedError("cfn.raw")

    monkeypatch.setattr("cfn.cloudflare.reconcile.run_pass", refused)
    settings = CloudflareSettings(secrets_file=_secrets(tmp_path))
    window = Window(since=datetime.now(UTC) - timedelta(hours=1))
    metrics = ReconcileMetrics.create(CollectorRegistry())
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(
            run_every(
                settings,
                window,
                60.0,
                tenants=None,
                backfill=False,
                metrics=metrics,
                print_line=print,
                sleep=_passes(3),
            )
        )


# ---- against a real ingest --------------------------------------------------------------------


class Stack:
    def __init__(self, tmp: Path, kafka: str, prefix: str, fake: FakeCloudflare) -> None:
        self.path = _secrets(tmp)
        self.file = SecretsFile(self.path)
        self.prefix = prefix
        self.kafka = kafka
        self.fake = fake
        self.ingest: Process = start_ingest(
            tmp, kafka, prefix, {"CFN_INGEST_SECRETS_FILE": str(self.path)}
        )
        self.url = f"http://127.0.0.1:{self.ingest.port}/webhooks/cloudflare"
        self.settings = CloudflareSettings(
            api_base=fake.base, secrets_file=self.path, bootstrap=kafka, topic_prefix=prefix
        )


@pytest.fixture
def stack(
    tmp_path: Path, kafka: str, unique: Callable[[str], str], fake: FakeCloudflare
) -> Iterator[Stack]:
    s = Stack(tmp_path, kafka, unique("cf") + ".", fake)
    try:
        yield s
    finally:
        s.ingest.stop()
        for secret in [FIRST, TOKEN, *s.file.secrets("acme")]:
            assert secret not in s.ingest.output


FAST = Timing(settle=1.5, confirm_timeout=5, poll=0.2)


@pytest.mark.broker
def test_connect_creates_the_destination_and_policies_and_again_changes_nothing(
    stack: Stack,
) -> None:
    fake = stack.fake
    types = ["health_check_status_notification", "universal_ssl_event_type"]
    report = with_client(fake, lambda c: connect(c, stack.file, "acme", stack.url, types, FAST))
    assert report.changed
    hooks = list(fake.accounts[ACCOUNT].webhooks.values())
    assert [h["name"] for h in hooks] == [destination_name("acme")]
    assert fake.deliveries == [202]  # the test POST, answered by the ingest with the new secret
    secrets = stack.file.secrets("acme")
    assert secrets == [FIRST, hooks[0]["secret"]]  # beside the one it had
    policies = fake.accounts[ACCOUNT].policies.values()
    assert sorted(p["alert_type"] for p in policies) == types
    assert all(p["mechanisms"] == {"webhooks": [{"id": hooks[0]["id"]}]} for p in policies)

    again = with_client(fake, lambda c: connect(c, stack.file, "acme", stack.url, types, FAST))
    assert not again.changed, again.lines
    assert stack.file.secrets("acme") == secrets
    assert len(fake.accounts[ACCOUNT].policies) == 2 and fake.deliveries == [202]
    writes = [(m, p) for m, p, _ in fake.calls if m != "GET"]
    assert len(writes) == 3  # one destination and two policies, all from the first run


@pytest.mark.broker
def test_rotate_with_deliveries_in_flight_never_gets_a_401(stack: Stack) -> None:
    fake = stack.fake
    with_client(fake, lambda c: connect(c, stack.file, "acme", stack.url, [], FAST))
    before = stack.file.secrets("acme")
    stop = threading.Event()
    statuses: list[int] = []

    def deliveries() -> None:
        i = 0
        while not stop.is_set():
            statuses.append(fake.deliver(ACCOUNT, alert(correlation=f"r{i}"), record=False))
            i += 1
            time.sleep(0.05)

    sender = threading.Thread(target=deliveries)
    sender.start()
    try:
        report = with_client(fake, lambda c: rotate(c, stack.file, "acme", FAST))
    finally:
        stop.set()
        sender.join(10)
    after = stack.file.secrets("acme")
    assert len(after) == 1 and after != before
    assert fake.accounts[ACCOUNT].webhooks and all(
        h["secret"] == after[0] for h in fake.accounts[ACCOUNT].webhooks.values()
    )
    assert len(statuses) > 20 and set(statuses) == {202}, statuses
    assert any(line.startswith("confirmed") for line in report.lines), report.lines


@pytest.mark.broker
def test_reconcile_reports_the_gaps_backfills_once_and_skips_silences(stack: Stack) -> None:
    fake = stack.fake
    with_client(fake, lambda c: connect(c, stack.file, "acme", stack.url, [], FAST))
    hook_id = next(iter(fake.accounts[ACCOUNT].webhooks))
    history = fake.accounts[ACCOUNT].history
    delivered = alert(correlation="ok")
    assert fake.deliver(ACCOUNT, delivered) == 202
    # Shift the delivered record back past the grace period, beside records never delivered.
    old = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    recent = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    gap = {**alert(correlation="gap"), "text": "the origin is down (never delivered)"}
    quiet = {**alert(correlation="quiet"), "text": "silenced", "policy_id": "quiet-policy"}
    history += [
        fake.history_record(hook_id, gap, old),
        fake.history_record(hook_id, quiet, old),
        fake.history_record(hook_id, {**gap, "text": "too recent"}, recent),
    ]
    fake.accounts[ACCOUNT].silences.append(
        {"id": "s1", "policy_id": "quiet-policy", "start_time": old, "end_time": recent}
    )
    window = Window(since=datetime.now(UTC) - timedelta(hours=3))
    # The delivered one reached cfn.raw now: its record says it was sent now too.
    first = run(run_pass(stack.settings, window, backfill=True))
    outcome = first[0].outcome
    assert first[0].error is None
    assert [r.alert_body for r in outcome.missed] == [gap["text"]]
    assert [r.alert_body for r in outcome.silenced] == ["silenced"]
    assert [r.alert_body for r in outcome.pending] == ["too recent"]
    assert len(outcome.delivered) == 1 and first[0].written == 1

    second = run(run_pass(stack.settings, window, backfill=True))
    assert second[0].written == 0 and not second[0].outcome.missed
    assert [r.alert_body for r in second[0].outcome.backfilled] == [gap["text"]]

    raw = run(drain(stack.kafka, f"{stack.prefix}raw", settle=1.0))
    backfills = [r for r in raw if dict(r.headers).get("cfn-origin") == b"history"]
    assert len(backfills) == 1
    headers = dict(backfills[0].headers)
    assert headers["cfn-tenant"] == b"acme"
    assert headers["cfn-history-id"].decode() == outcome.missed[0].id
    assert backfills[0].value == backfill_body(outcome.missed[0], ACCOUNT)
    # Its copies, one on every other partition, written once too.
    marks = [r for r in raw if dict(r.headers).get("cfn-origin") == b"history-mark"]
    assert sorted(r.partition for r in marks) == sorted({0, 1, 2, 3} - {backfills[0].partition})
    assert all(r.value == backfills[0].value for r in marks)
    assert all(dict(r.headers)["cfn-history-id"] == headers["cfn-history-id"] for r in marks)


async def _set_retention(kafka: str, topic: str, retention: timedelta) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    ms = str(int(retention.total_seconds() * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": ms})]
        )
    finally:
        await admin.close()


async def _delete_all_but_last(kafka: str, topic: str) -> tuple[datetime, int]:
    """Delete the records of `topic`'s fullest partition but its last (as retention.bytes or
    kafka-delete-records.sh would); returns that record's time and how many went."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
    from aiokafka.structs import TopicPartition

    by_partition: dict[int, list[Any]] = {}
    for record in await drain(kafka, topic, settle=1.0):
        by_partition.setdefault(record.partition, []).append(record)
    kept = max(by_partition.values(), key=len)[-1]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        tp = TopicPartition(topic, kept.partition)
        await admin.delete_records({tp: RecordsToDelete(kept.offset)}, timeout_ms=10_000)
    finally:
        await admin.close()
    return datetime.fromtimestamp(kept.timestamp / 1000, UTC), kept.offset


@pytest.mark.broker
def test_reconcile_compares_no_history_older_than_cfn_raw_holds(stack: Stack) -> None:
    """Retention decides where the window may start: history older than `retention.ms`, and
    older than a partition's oldest record where older ones were deleted, is not compared
    (it would look missed, and be backfilled again)."""
    fake = stack.fake
    with_client(fake, lambda c: connect(c, stack.file, "acme", stack.url, [], FAST))
    hook_id = next(iter(fake.accounts[ACCOUNT].webhooks))

    def sent_ago(age: timedelta) -> str:
        return (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    fake.accounts[ACCOUNT].history += [
        fake.history_record(hook_id, {**alert(correlation=f"h{age}"), "text": text}, sent_ago(age))
        for text, age in [
            ("two hours ago", timedelta(hours=2)),
            ("forty minutes ago", timedelta(minutes=40)),
        ]
    ]
    window = Window(since=datetime.now(UTC) - timedelta(hours=3))
    (whole,) = run(run_pass(stack.settings, window))
    assert whole.horizon is None
    assert sorted(str(r.alert_body) for r in whole.outcome.missed) == [
        "forty minutes ago",
        "two hours ago",
    ]

    raw = f"{stack.prefix}raw"
    run(_set_retention(stack.kafka, raw, timedelta(hours=1)))
    moment = datetime.now(UTC).replace(microsecond=0)
    (kept,) = run(run_pass(stack.settings, window, now=moment.timestamp))
    assert kept.horizon == moment - timedelta(hours=1)
    assert [r.alert_body for r in kept.outcome.missed] == ["forty minutes ago"]
    assert any(line.startswith("  not compared: history sent before") for line in kept.lines())

    for i in range(8):  # records on every partition, several on some
        assert fake.deliver(ACCOUNT, alert(correlation=f"c{i}"), record=False) == 202
    kept_at, deleted = run(_delete_all_but_last(stack.kafka, raw))
    assert deleted >= 1
    (cut,) = run(run_pass(stack.settings, window))
    # The partition cut by deletion holds nothing before its oldest record: the later horizon.
    assert cut.horizon == kept_at
    assert cut.outcome.missed == [], cut.lines()
    assert any(line.startswith("  not compared: history sent before") for line in cut.lines())


def _correlation_on(partition: int, body: dict[str, Any], want_home: bool) -> dict[str, Any]:
    """`body` with a correlation id whose raw key falls on `partition` (or off it)."""
    for i in range(1000):
        candidate = {**body, "alert_correlation_id": f"late-{i}"}
        on = partition_for(incident_key("acme", candidate), 4) == partition
        if on == want_home:
            return candidate
    raise AssertionError("no correlation id found")


@pytest.mark.broker
def test_a_late_original_after_its_backfill_makes_no_second_event(
    stack: Stack, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    fake = stack.fake
    app_id = unique("cf-app")
    worker = start_worker(tmp_path, stack.kafka, stack.prefix, app_id)
    try:
        with_client(fake, lambda c: connect(c, stack.file, "acme", stack.url, [], FAST))
        hook_id = next(iter(fake.accounts[ACCOUNT].webhooks))
        sent = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        moment = sent.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lost = [
            alert(account=ACCOUNT, correlation=None, ts=int(sent.timestamp()), text=f"{n} is down")
            for n in ("origin a", "origin b")
        ]
        fake.accounts[ACCOUNT].history += [fake.history_record(hook_id, b, moment) for b in lost]
        window = Window(since=datetime.now(UTC) - timedelta(hours=3))
        (result,) = run(run_pass(stack.settings, window, backfill=True))
        assert result.written == 2, result.lines()
        raw = run(drain(stack.kafka, f"{stack.prefix}raw", settle=1.0))
        home = {
            jsonio.loads(r.value)["text"]: r.partition
            for r in raw
            if dict(r.headers).get("cfn-origin") == b"history"
        }
        # The originals come after all, with their correlation ids (the history has none):
        # one lands on its backfill's partition, one on another (where a copy waits).
        late = [
            _correlation_on(home[lost[0]["text"]], lost[0], want_home=True),
            _correlation_on(home[lost[1]["text"]], lost[1], want_home=False),
        ]
        for body in [*late, late[0], alert(correlation="fresh", text="a new one")]:
            assert fake.deliver(ACCOUNT, body, record=False) == 202
        run(wait_caught_up(stack.kafka, app_id, f"{stack.prefix}raw", timeout=90))
    finally:
        worker.stop()
    assert "Traceback" not in worker.output, worker.output[-3000:]
    events = read_checked(stack.kafka, f"{stack.prefix}events", "events")
    by_text = {e["text"]: e for e in events}
    assert len(events) == 4, [(e["text"], e["origin"]) for e in events]  # with the test POST
    for body in lost:
        event = by_text[body["text"]]
        assert event["origin"] == "history" and event["ts"] == int(sent.timestamp())
        assert event["correlation_id"] is None and event["event"] is None
    assert by_text["a new one"]["origin"] == "webhook"
    incidents = read_checked(stack.kafka, f"{stack.prefix}incidents", "incidents")
    assert [i["correlation_id"] for i in incidents] == ["fresh"]  # the late ones were dropped


@pytest.mark.broker
def test_status_and_reconcile_from_the_command_line(stack: Stack) -> None:
    import subprocess
    import sys

    from tests.services import cfn_env

    with_client(stack.fake, lambda c: connect(c, stack.file, "acme", stack.url, [], FAST))
    env = cfn_env(
        {
            "CFN_INGEST_SECRETS_FILE": str(stack.path),
            "CFN_CLOUDFLARE_API_BASE": stack.fake.base,
            "CFN_KAFKA_BOOTSTRAP": stack.kafka,
            "CFN_TOPIC_PREFIX": stack.prefix,
        }
    )

    def cfn(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cfn", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    status = cfn("cloudflare", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("acme: ok; destination ")
    assert "last_failure never" in status.stdout
    reconciled = cfn("reconcile", "--since", "1h")
    assert reconciled.returncode == 0, reconciled.stderr
    assert "tenant acme: 0 sent to cfn" in reconciled.stdout
    for secret in [TOKEN, *stack.file.secrets("acme")]:
        assert secret not in status.stdout + status.stderr + reconciled.stdout + reconciled.stderr
