"""`cfn ingest`, `cfn worker` and `cfn reconcile` on the secured broker (SASL_SSL with
SCRAM-SHA-512, mTLS, StandardAuthorizer): end to end as principals holding exactly their role's
ACLs, and a clear, named failure for a missing ACL, a wrong password and an untrusted CA. No
password shows in any log or metric."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cfn.config import changelog_topic, topic_names
from cfn.schemas import jsonio
from cfn.security import KafkaSecurity, Secret
from cfn.shell.acls import role_acls
from cfn.shell.broker import ADMIN_USER, LocalKafka
from cfn.topics import ensure_topics
from tests.fake_cloudflare import FakeCloudflare, now_text
from tests.kafka_util import run
from tests.payloads import alert, encode
from tests.secure_kafka import apply_acls, client_certificate, remove_acls, untrusted_ca_file
from tests.services import (
    Process,
    cfn_env,
    metric_value,
    request,
    start_ingest,
    start_worker,
)

pytestmark = pytest.mark.broker

SECRET = "secure-stack-webhook-secret"
AUTH = {"cf-webhook-auth": SECRET, "content-type": "application/json"}
WEBHOOK = "/webhooks/cloudflare"
PARTITIONS = 2


def names() -> tuple[str, str]:
    token = uuid.uuid4().hex[:8]
    return f"sec{token}.", f"sec-{token}"


def provision(secure: LocalKafka, prefix: str, app_id: str) -> None:
    """Create every topic as the admin: cfn's principals may not create topics."""
    admin = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username=ADMIN_USER,
        password=Secret(secure.password(ADMIN_USER)),
        cafile=secure.ca_file,
    )
    roles = list(topic_names(prefix).items())
    roles.append(("changelog", changelog_topic(app_id)))
    run(ensure_topics(secure.bootstrap, roles, PARTITIONS, 1, security=admin))


def scram_env(secure: LocalKafka, user: str, **extra: str) -> dict[str, str]:
    return {**secure.client_env(user), **extra}


def mtls_env(secure: LocalKafka, cn: str) -> dict[str, str]:
    cert, key = client_certificate(secure, cn)
    return {
        "CFN_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CFN_KAFKA_SSL_CAFILE": str(secure.ca_file),
        "CFN_KAFKA_SSL_CERTFILE": str(cert),
        "CFN_KAFKA_SSL_KEYFILE": str(key),
    }


def exits(process: Process, timeout: float = 90.0) -> int:
    """Wait for a process that should stop by itself; its exit status."""
    assert process.proc is not None
    deadline = time.monotonic() + timeout
    while (code := process.proc.poll()) is None:
        assert time.monotonic() < deadline, f"still running:\n{process.output[-3000:]}"
        time.sleep(0.2)
    return code


def read_as_admin(secure: LocalKafka, topic: str, expect: int, timeout: float = 60) -> list[Any]:
    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            **secure.client_options(),
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        found: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while len(found) < expect and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [orjson.loads(r.value) for r in records]
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


def post(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    answer = request(port, "POST", WEBHOOK, body, AUTH, timeout=15)
    return answer.status, orjson.loads(answer.body) if answer.body else {}


def secrets_of(secure: LocalKafka) -> list[str]:
    return [
        secure.password(user) for user in (ADMIN_USER, "ingest", "worker", "reconcile", "alice")
    ]


def assert_no_secret(secure: LocalKafka, texts: Mapping[str, str]) -> None:
    for where, text in texts.items():
        for password in secrets_of(secure):
            assert password not in text, f"a password in {where}"


def test_ingest_and_worker_end_to_end_with_exactly_their_acls(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    """The ingest logs in with SCRAM (password from a file), the worker with a client
    certificate (User:<CN>); each holds only its role's ACLs; topics are provisioned apart."""
    prefix, app_id = names()
    provision(secure_kafka, prefix, app_id)
    worker_cn = f"worker-{app_id}"
    apply_acls(
        secure_kafka,
        role_acls("ingest", "User:ingest", prefix, app_id)
        + role_acls("worker", f"User:{worker_cn}", prefix, app_id),
    )
    ingest = start_ingest(
        tmp_path,
        secure_kafka.bootstrap,
        prefix,
        {**scram_env(secure_kafka, "ingest"), "CFN_INGEST_SECRET": SECRET},
    )
    worker = start_worker(
        tmp_path,
        secure_kafka.ssl_bootstrap,
        prefix,
        app_id,
        {**mtls_env(secure_kafka, worker_cn), "CFN_LOG_LEVEL": "INFO"},
        partitions=PARTITIONS,
    )
    try:
        now = int(time.time())
        start = alert(correlation=f"c-{app_id}", ts=now - 60)
        end = alert(correlation=f"c-{app_id}", event="ALERT_STATE_EVENT_END", ts=now - 10)
        assert post(ingest.port, encode(start))[0] == 202
        assert post(ingest.port, encode(end))[0] == 202
        incidents = read_as_admin(secure_kafka, f"{prefix}incidents", 2)
        table = read_as_admin(secure_kafka, f"{prefix}incident-state", 2)
        metrics = {
            "ingest metrics": request(ingest.admin_port, "GET", "/metrics").body.decode(),
            "worker metrics": request(worker.port, "GET", "/metrics").body.decode(),
        }
    finally:
        ingest.stop()
        worker.stop()
    assert [i["state"] for i in incidents] == ["open", "resolved"]
    assert incidents[1]["duration_s"] == 50
    assert [i["version"] for i in table] == [1, 2]
    assert_no_secret(
        secure_kafka,
        {"ingest log": ingest.output, "worker log": worker.output, **metrics},
    )


def worker_refused(
    secure: LocalKafka, tmp_path: Path, env: dict[str, str], prefix: str, app_id: str
) -> str:
    worker = start_worker(
        tmp_path, secure.bootstrap, prefix, app_id, env, partitions=PARTITIONS, wait=False
    )
    try:
        code = exits(worker)
    finally:
        worker.stop()
    assert code == 1, worker.output[-3000:]
    assert "Traceback" not in worker.output, worker.output[-3000:]
    assert_no_secret(secure, {"worker log": worker.output})
    return worker.output


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("TRANSACTIONAL_ID", "the transactional ids"),
        ("GROUP", "the consumer group"),
    ],
)
def test_a_worker_missing_one_acl_exits_at_start_naming_it(
    secure_kafka: LocalKafka, tmp_path: Path, missing: str, named: str
) -> None:
    prefix, app_id = names()
    provision(secure_kafka, prefix, app_id)
    acls = role_acls("worker", "User:alice", prefix, app_id)
    apply_acls(secure_kafka, [a for a in acls if a.resource_type != missing])
    output = worker_refused(
        secure_kafka, tmp_path, scram_env(secure_kafka, "alice"), prefix, app_id
    )
    assert f"Kafka refused access to {named}" in output, output[-3000:]
    assert "cfn acls --role worker" in output


@pytest.mark.faults  # a fault injected into a running worker: make test-faults, and CI
def test_an_acl_removed_while_the_worker_runs_stops_it_naming_the_refusal(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    """WRITE on cfn.events taken away: the next transaction that writes an event is refused
    (aiokafka then reports only IllegalOperation; the cause is read from the transaction)."""
    prefix, app_id = names()
    provision(secure_kafka, prefix, app_id)
    acls = role_acls("worker", "User:alice", prefix, app_id)
    apply_acls(secure_kafka, acls)
    worker = start_worker(
        tmp_path,
        secure_kafka.bootstrap,
        prefix,
        app_id,
        scram_env(secure_kafka, "alice"),
        partitions=PARTITIONS,
    )
    try:
        events = [a for a in acls if a.name == f"{prefix}events"]
        assert events
        remove_acls(secure_kafka, events)

        async def produce() -> None:
            producer = AIOKafkaProducer(**secure_kafka.client_options())
            await producer.start()
            try:
                await producer.send_and_wait(f"{prefix}raw", encode(alert()), key=b"k")
            finally:
                await producer.stop()

        asyncio.run(produce())
        code = exits(worker)
    finally:
        worker.stop()
    assert code == 1, worker.output[-3000:]
    assert "Kafka refused access to a topic (TopicAuthorizationFailedError" in worker.output
    assert f"{prefix}events" in worker.output, worker.output[-3000:]


def test_a_worker_that_may_not_create_a_missing_topic_exits_naming_it(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    prefix, app_id = names()  # nothing provisioned: cfn's principal may not create topics
    apply_acls(secure_kafka, role_acls("worker", "User:alice", prefix, app_id))
    output = worker_refused(
        secure_kafka, tmp_path, scram_env(secure_kafka, "alice"), prefix, app_id
    )
    assert "is not visible to this principal (DESCRIBE) and it may not create it" in output
    assert f"{prefix}" in output, output[-3000:]


def test_a_wrong_password_or_an_untrusted_ca_stops_the_worker_with_the_reason(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    prefix, app_id = names()
    wrong = scram_env(secure_kafka, "alice")
    del wrong["CFN_KAFKA_SASL_PASSWORD_FILE"]
    wrong["CFN_KAFKA_SASL_PASSWORD"] = "not-the-password"
    output = worker_refused(secure_kafka, tmp_path, wrong, prefix, app_id)
    assert "Kafka refused the SASL login" in output, output[-3000:]
    assert "not-the-password" not in output

    untrusted = scram_env(
        secure_kafka, "alice", CFN_KAFKA_SSL_CAFILE=str(untrusted_ca_file(secure_kafka))
    )
    output = worker_refused(secure_kafka, tmp_path, untrusted, prefix, app_id)
    assert "TLS: the certificate of" in output and "is not accepted" in output, output[-3000:]


def test_an_ingest_refused_by_kafka_answers_500_with_the_cause_and_counts_it(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    """Missing WRITE on the raw topic, then a wrong password: never a 2xx, a 500 that names
    the cause (no retry cures it), counted by cause; /readyz is 503 while it cannot write."""
    prefix, app_id = names()
    provision(secure_kafka, prefix, app_id)
    no_raw = [a for a in role_acls("ingest", "User:alice", prefix, app_id) if "raw" not in a.name]
    apply_acls(secure_kafka, no_raw)
    ingest = start_ingest(
        tmp_path,
        secure_kafka.bootstrap,
        prefix,
        {**scram_env(secure_kafka, "alice"), "CFN_INGEST_SECRET": SECRET},
        wait_for="/healthz",
    )
    try:
        deadline = time.monotonic() + 60
        while (answer := post(ingest.port, encode(alert())))[0] != 500:
            assert answer[0] == 503, answer  # not connected yet: never a 2xx
            assert time.monotonic() < deadline, ingest.output[-3000:]
            time.sleep(0.5)
        status, body = answer
        ready = request(ingest.admin_port, "GET", "/readyz").status
        errors = metric_value(
            ingest.admin_port,
            'cfn_ingest_kafka_errors_total{cause="TopicAuthorizationFailedError",kind="permanent"}',
        )
        # The operator grants the missing ACL: the same process takes webhooks again.
        apply_acls(secure_kafka, role_acls("ingest", "User:alice", prefix, app_id))
        deadline = time.monotonic() + 60
        while (fixed := post(ingest.port, encode(alert())))[0] != 202:
            assert fixed[0] in (500, 503), fixed
            assert time.monotonic() < deadline, ingest.output[-3000:]
            time.sleep(0.5)
    finally:
        ingest.stop()
    assert status == 500 and "TopicAuthorizationFailedError" in body["message"], body
    assert errors == 1 and ready == 503

    wrong = scram_env(secure_kafka, "alice")
    del wrong["CFN_KAFKA_SASL_PASSWORD_FILE"]
    wrong["CFN_KAFKA_SASL_PASSWORD"] = "not-the-password"
    refused = start_ingest(
        tmp_path,
        secure_kafka.bootstrap,
        prefix,
        {**wrong, "CFN_INGEST_SECRET": SECRET},
        wait_for="/healthz",
    )
    try:
        deadline = time.monotonic() + 60
        while (answer := post(refused.port, encode(alert())))[0] != 500:
            assert answer[0] == 503, answer  # not connected yet: never a 2xx
            assert time.monotonic() < deadline, refused.output[-3000:]
            time.sleep(0.5)
        ready = request(refused.admin_port, "GET", "/readyz").status
    finally:
        refused.stop()
    assert "SaslAuthenticationFailed" in answer[1]["message"], answer
    assert ready == 503
    assert refused.output.count("Kafka refused the SASL login") == 1, refused.output[-3000:]
    assert_no_secret(secure_kafka, {"ingest log": ingest.output + refused.output})


# ---- cfn reconcile --backfill, against the tests' fake Cloudflare API --------------------------

ACCOUNT = "0123456789abcdef0123456789abcdef"
CF_TOKEN = "cf-token-secure-stack-never-shown-0123"


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    """An account whose cfn destination (cfn-acme) Cloudflare sent one notification to, two
    hours ago, that never reached cfn: a pass with --backfill writes it."""
    fake = FakeCloudflare()
    fake.start()
    account = fake.account(ACCOUNT, CF_TOKEN)
    hook = {
        "id": "5a7805061c76ada191ed06f989cc3dac",
        "name": "cfn-acme",
        "url": "https://cfn.example.net/webhooks/cloudflare",
        "secret": "",
        "type": "generic",
        "created_at": now_text(),
    }
    account.webhooks[hook["id"]] = hook
    sent = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lost = alert(account=ACCOUNT, correlation=None, text="origin a is down")
    account.history.append(fake.history_record(hook["id"], lost, sent))
    try:
        yield fake
        assert fake.violations == [], "\n".join(fake.violations)
    finally:
        fake.stop()


def reconcile(
    secure: LocalKafka, tmp_path: Path, fake: FakeCloudflare, prefix: str, login: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """One `cfn reconcile --since 3h --backfill`, logged in to Kafka by `login`'s variables."""
    token_file = tmp_path / "acme.token"
    token_file.write_text(CF_TOKEN + "\n")
    secrets_file = tmp_path / "secrets.json"
    account = {"account_id": ACCOUNT, "api_token_file": str(token_file)}
    tenants = {"acme": {"secrets": [SECRET], "cloudflare": account}}
    secrets_file.write_bytes(jsonio.dumps(tenants))
    env = cfn_env(
        {
            **login,
            "CFN_INGEST_SECRETS_FILE": str(secrets_file),
            "CFN_CLOUDFLARE_API_BASE": fake.base,
            "CFN_TOPIC_PREFIX": prefix,
        }
    )
    command = [sys.executable, "-m", "cfn", "reconcile", "--since", "3h", "--backfill"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    assert_no_secret(secure, {"reconcile output": output})
    assert CF_TOKEN not in output
    return done


def test_reconcile_backfills_once_with_exactly_its_acls(
    secure_kafka: LocalKafka, tmp_path: Path, cloudflare: FakeCloudflare
) -> None:
    """`cfn reconcile --backfill` as User:reconcile holding only `cfn acls --role reconcile`:
    the missed notification is written (with its copy on the other partition), and a second
    pass reads it back from cfn.raw and writes nothing."""
    prefix, app_id = names()
    provision(secure_kafka, prefix, app_id)
    apply_acls(secure_kafka, role_acls("reconcile", "User:reconcile", prefix, app_id))
    login = scram_env(secure_kafka, "reconcile")
    first = reconcile(secure_kafka, tmp_path, cloudflare, prefix, login)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 missed" in first.stdout and "1 backfilled now" in first.stdout, first.stdout
    second = reconcile(secure_kafka, tmp_path, cloudflare, prefix, login)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 missed" in second.stdout and "1 backfilled earlier" in second.stdout
    assert "backfilled now" not in second.stdout, second.stdout
    raw = read_as_admin(secure_kafka, f"{prefix}raw", PARTITIONS)
    assert [r["text"] for r in raw] == ["origin a is down"] * PARTITIONS  # the backfill, a copy


def test_a_reconcile_without_write_reports_but_its_backfill_is_refused_by_name(
    secure_kafka: LocalKafka, tmp_path: Path, cloudflare: FakeCloudflare
) -> None:
    """A principal of its own (a client certificate): with no WRITE anywhere, its idempotent
    producer is refused a producer id, after the pass has read cfn.raw and reported."""
    prefix, app_id = names()
    provision(secure_kafka, prefix, app_id)
    cn = f"reconcile-{app_id}"
    acls = role_acls("reconcile", f"User:{cn}", prefix, app_id)
    apply_acls(secure_kafka, [a for a in acls if a.operation != "WRITE"])
    login = {**mtls_env(secure_kafka, cn), "CFN_KAFKA_BOOTSTRAP": secure_kafka.ssl_bootstrap}
    refused = reconcile(secure_kafka, tmp_path, cloudflare, prefix, login)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "missed: tenant acme" in refused.stderr, refused.stderr  # it read, then was refused
    assert "Kafka refused access to a cluster operation" in refused.stderr, refused.stderr
    assert "cfn acls --role reconcile" in refused.stderr
