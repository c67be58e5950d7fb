"""The roles' ACLs: enough for what each role does, and each one needed (on the secured broker);
`cfn acls` prints exactly them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.config import OUTPUT_ROLES, TABLES, changelog_topic, topic_names
from cfn.shell.acls import ROLES, Acl, kafka_acls_command, parse_kafka_acls_command, role_acls
from cfn.shell.broker import LocalKafka
from cfn.shell.cli import main
from tests.kafka_util import run
from tests.secure_kafka import apply_acls, mtls_options

TOPIC_AUTHORIZATION_FAILED = 29  # Kafka's error codes for a refusal
CLUSTER_AUTHORIZATION_FAILED = 31
STEP_TIMEOUT = 25.0  # a role's work, or its failure; a refusal that never answers ends here


# -- the data and the command line -----------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_cfn_acls_prints_one_parsable_command_per_acl(
    role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "acls",
                "--principal",
                "User:svc",
                "--role",
                role,
                "--prefix",
                "p.",
                "--app-id",
                "app",
                "--bootstrap",
                "kafka:9093",
            ]
        )
    assert exit_info.value.code in (0, None)
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert all(
        line.startswith(
            "kafka-acls.sh --bootstrap-server kafka:9093 --command-config admin.properties --add "
        )
        for line in lines
    )
    assert [parse_kafka_acls_command(line) for line in lines] == role_acls(
        role, "User:svc", "p.", "app"
    )


def test_role_acls_are_exact() -> None:
    ingest = role_acls("ingest", "User:i")
    assert {(a.resource_type, a.name, a.pattern, a.operation) for a in ingest} == {
        ("TOPIC", "cfn.raw", "LITERAL", "WRITE"),
        ("TOPIC", "cfn.dlq", "LITERAL", "WRITE"),
    }
    worker = {
        (a.resource_type, a.name, a.pattern, a.operation) for a in role_acls("worker", "User:w")
    }
    assert ("GROUP", "cfn", "LITERAL", "READ") in worker
    assert ("TRANSACTIONAL_ID", "cfn-worker-", "PREFIXED", "WRITE") in worker  # the default
    per_partition = role_acls("worker", "User:w", transactions="partition")
    assert ("TRANSACTIONAL_ID", "cfn-task-", "PREFIXED", "WRITE") in [
        (a.resource_type, a.name, a.pattern, a.operation) for a in per_partition
    ]
    assert ("TOPIC", "cfn-changelog", "LITERAL", "READ") in worker
    assert ("TOPIC", "cfn-changelog", "LITERAL", "WRITE") in worker
    assert not any(a[1].endswith("-dedup-changelog") for a in worker)
    upgrading = {
        (a.resource_type, a.name, a.pattern, a.operation)
        for a in role_acls("worker", "User:w", upgrading=True)
    }
    assert upgrading - worker == {
        ("TOPIC", f"cfn-{table}-changelog", "LITERAL", "READ") for table in TABLES
    }
    assert not any(a[0] == "CLUSTER" for a in worker)
    reconcile = role_acls("reconcile", "User:r", "p.", "app")
    assert [(a.resource_type, a.name, a.pattern, a.operation) for a in reconcile] == [
        ("TOPIC", "p.raw", "LITERAL", "READ"),
        ("TOPIC", "p.raw", "LITERAL", "WRITE"),
        ("TOPIC", "p.raw", "LITERAL", "DESCRIBE_CONFIGS"),
    ]
    assert all(a.allow and a.host == "*" for a in role_acls("worker", "User:w"))
    with pytest.raises(ValueError):
        role_acls("admin", "User:x")
    with pytest.raises(ValueError):
        role_acls("ingest", "alice")


def test_kafka_acls_command_round_trips_every_kind() -> None:
    for acl in (
        Acl("CLUSTER", "kafka-cluster", "LITERAL", "IDEMPOTENT_WRITE", "User:a"),
        Acl("TRANSACTIONAL_ID", "x-task-", "PREFIXED", "WRITE", "User:a"),
        Acl("TOPIC", "odd name's", "LITERAL", "DESCRIBE", "User:a b", allow=False, host="10.0.0.1"),
    ):
        assert parse_kafka_acls_command(kafka_acls_command(acl, "b:1")) == acl


# -- on the secured broker: each role's work, with its ACLs and with one fewer ----------------


async def _admin_create(kafka: LocalKafka, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()


async def _admin_produce(kafka: LocalKafka, topics: list[str]) -> None:
    producer = AIOKafkaProducer(acks="all", **kafka.client_options())
    await producer.start()
    try:
        for topic in topics:
            await producer.send_and_wait(topic, b"input", key=b"k")
    finally:
        await producer.stop()


async def ingest_work(options: dict[str, Any], prefix: str, _app_id: str) -> None:
    """What the ingest does: an idempotent acks=all producer writing raw and dlq."""
    topics = topic_names(prefix)
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
    try:
        await producer.start()
        await producer.send_and_wait(topics["raw"], b"body", key=b"k")
        await producer.send_and_wait(topics["dlq"], b"bad body", key=b"k")
    finally:
        await producer.stop()


async def worker_work(options: dict[str, Any], prefix: str, app_id: str) -> None:
    """What the worker does (CFN_TRANSACTIONS=worker, the default): consume raw and rate-input
    in group <app_id> (read_committed), write every output and changelog in a transaction of
    `<app_id>-worker-<id>` that also commits the consumed offsets as a group member (KIP-447,
    TxnOffsetCommit v3) and that it lists as open (ListTransactions), read the committed offsets
    back, and restore the changelogs."""
    topics = topic_names(prefix)
    changelogs = [changelog_topic(app_id)]
    inputs = [topics["raw"], topics["rate-input"]]
    consumer = AIOKafkaConsumer(
        *inputs,
        group_id=app_id,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **options,
    )
    producer = AIOKafkaProducer(transactional_id=f"{app_id}-worker-w0", **options)
    reader = AIOKafkaConsumer(
        group_id=None, isolation_level="read_committed", enable_auto_commit=False, **options
    )
    try:
        await consumer.start()
        internals.commit_offsets_as_member(producer, consumer)  # its coordinator, once started
        offsets: dict[TopicPartition, int] = {}
        while len(offsets) < len(inputs):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                offsets[tp] = records[-1].offset + 1
        await producer.start()
        async with producer.transaction():
            sent = [
                await producer.send(name, b"out", key=b"k")
                for name in [topics[o] for o in (*OUTPUT_ROLES, "rate-input")] + changelogs
            ]
            await asyncio.gather(*sent)
            await producer.send_offsets_to_transaction(offsets, app_id)
            # It sees its own open transaction (fetch_committed's check for orphaned offsets).
            assert not await internals.no_open_transactions(consumer, f"{app_id}-")
        for tp, offset in offsets.items():
            # The transaction's offsets count once its marker reached the offsets topic.
            while await consumer.committed(tp) != offset:
                await asyncio.sleep(0.1)
        await reader.start()
        tps = [TopicPartition(name, 0) for name in changelogs]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        seen: set[TopicPartition] = set()
        while seen != set(tps):
            for tp, records in (await reader.getmany(timeout_ms=500)).items():
                if records:
                    seen.add(tp)
        assert all(ends[tp] >= 1 for tp in tps)
    finally:
        for client in (reader, producer, consumer):
            with contextlib.suppress(Exception):
                await client.stop()


async def reconcile_work(options: dict[str, Any], prefix: str, _app_id: str) -> None:
    """What `cfn reconcile --backfill` does (cfn.cloudflare.reconcile): read raw's retention,
    read raw since a time with a consumer in no group (its partitions from a metadata round
    trip, beginning and end offsets, the offsets for the time, assign, seek, fetch), then write
    a backfill and its copies with an idempotent acks=all producer, each to a partition it
    chose."""
    raw = topic_names(prefix)["raw"]
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **options)
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        assert "retention.ms" in await internals.topic_configs(admin, raw)
        await consumer.start()
        cluster = await internals.fetch_metadata(consumer)
        partitions = sorted(cluster.partitions_for_topic(raw) or ())
        if not partitions:  # a topic the principal may not describe is left out of metadata
            raise PermissionError(f"{raw} is not in this principal's metadata")
        tps = [TopicPartition(raw, p) for p in partitions]
        await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        first = await consumer.offsets_for_times({tp: 0 for tp in tps})
        consumer.assign(tps)
        for tp in tps:
            if first[tp] is not None:
                consumer.seek(tp, first[tp].offset)
        read = 0
        remaining = [tp for tp in tps if first[tp] is not None and first[tp].offset < end[tp]]
        while remaining:
            read += sum(map(len, (await consumer.getmany(*remaining, timeout_ms=500)).values()))
            remaining = [tp for tp in remaining if await consumer.position(tp) < end[tp]]
        assert read >= 1, "the input record was not read"
        await producer.start()
        for p in sorted(await producer.partitions_for(raw)):
            headers = [("cfn-origin", b"history"), ("cfn-history-id", b"h1")]
            await producer.send_and_wait(raw, b"backfill", key=b"k", partition=p, headers=headers)
    finally:
        for client in (producer, consumer):
            with contextlib.suppress(Exception):
                await client.stop()
        with contextlib.suppress(Exception):
            await admin.close()


async def provisioner_work(options: dict[str, Any], prefix: str, app_id: str) -> None:
    """What a provisioner does: create every topic and changelog, then see them in metadata."""
    names = [*topic_names(prefix).values(), changelog_topic(app_id)]
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(n, 1, 1) for n in names])
        errors = [(name, code) for name, code, *_ in response.topic_errors if code]
        if any(
            code in (TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED) for _, code in errors
        ):
            raise PermissionError(f"create_topics refused: {errors}")
        if errors:
            raise RuntimeError(f"create_topics failed: {errors}")
        # A topic just created may not be in the broker's metadata yet (UNKNOWN_TOPIC_OR_PARTITION,
        # LEADER_NOT_AVAILABLE): only an authorization verdict is a refusal; the rest is asked
        # again until the step's timeout.
        while True:
            described = await admin.describe_topics(names)
            codes = {t["topic"]: t["error_code"] for t in described}
            refused = [name for name, code in codes.items() if code == TOPIC_AUTHORIZATION_FAILED]
            if refused:
                raise PermissionError(f"cannot describe {refused}")
            if not any(codes.values()):
                return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


# How a missing ACL shows: Kafka's authorization errors, aiokafka's IllegalOperation for a
# transaction a refusal broke, and the provisioner's own PermissionError (from a topic verdict).
REFUSALS = {
    "TopicAuthorizationFailedError",
    "GroupAuthorizationFailedError",
    "TransactionalIdAuthorizationFailed",
    "ClusterAuthorizationFailedError",
    "IllegalOperation",
    "InvalidTxnState",  # aiokafka's other word for a transaction a refused write broke
    "PermissionError",
}

Work = Callable[[dict[str, Any], str, str], Awaitable[None]]
WORK: dict[str, Work] = {
    "ingest": ingest_work,
    "worker": worker_work,
    "reconcile": reconcile_work,
    "provisioner": provisioner_work,
}


async def _attempt(work: Work, options: dict[str, Any], prefix: str, app_id: str) -> str | None:
    """None when the work succeeded, else the name of what stopped it."""
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            await work(options, prefix, app_id)
    except TimeoutError:
        return "timeout"
    except AssertionError as exc:
        return f"AssertionError {exc}"
    except Exception as exc:
        print(f"{app_id}: {type(exc).__name__}: {exc}")  # shown on failure: the broker's words
        return type(exc).__name__
    return None


@pytest.mark.broker
@pytest.mark.parametrize("role", ROLES)
def test_each_of_a_roles_acls_is_needed(
    role: str, secure_kafka: LocalKafka, unique: Callable[[str], str]
) -> None:
    """Each of the role's ACLs is needed: one mTLS principal per ACL holds the role's list minus
    that one, each with its own app id (group, transactions, changelogs), and every one of them
    fails at the role's Kafka operations, re-enacted here with the clients cfn uses (first shown
    to succeed with the whole list). That the list is enough for cfn's own processes is
    test_secure_stack's: `cfn ingest` and `cfn worker` run end to end with exactly these ACLs,
    so an operation cfn starts to need fails that test."""
    token = unique("r")
    shared_prefix = f"{token}."

    def where(name: str) -> tuple[str, str]:
        """(prefix, app id) of one principal: a provisioner needs topics not yet created."""
        return (f"{name}." if role == "provisioner" else shared_prefix), name

    count = len(role_acls(role, "User:x"))
    variants = {f"{token}-without-{i}": i for i in range(count)}
    granted: list[Acl] = []
    for cn, skipped in variants.items():
        acls = role_acls(role, f"User:{cn}", *where(cn))
        granted += acls[:skipped] + acls[skipped + 1 :]
    full_name = f"{token}-full"
    user = role if role in ("ingest", "worker", "reconcile") else "alice"
    granted += role_acls(role, f"User:{user}", *where(full_name))
    # The same full list over mTLS: the variants' way in works, so their failures are the
    # missing ACL's and nothing else's.
    full_mtls = f"{token}-fullm"
    granted += role_acls(role, f"User:{full_mtls}", *where(full_mtls))
    if role != "provisioner":
        # The topics exist beforehand (least privilege); the inputs hold one record each.
        topics = topic_names(shared_prefix)
        names = list(topics.values())
        for app_id in [full_name, full_mtls, *variants]:
            names.append(changelog_topic(app_id))
        run(_admin_create(secure_kafka, names))
        run(_admin_produce(secure_kafka, [topics["raw"], topics["rate-input"]]))
    apply_acls(secure_kafka, granted)

    work = WORK[role]
    options = secure_kafka.client_options(user)
    assert run(_attempt(work, options, *where(full_name))) is None
    assert run(_attempt(work, mtls_options(secure_kafka, full_mtls), *where(full_mtls))) is None

    async def all_variants() -> list[str | None]:
        return await asyncio.gather(
            *(_attempt(work, mtls_options(secure_kafka, cn), *where(cn)) for cn in variants)
        )

    outcomes = dict(zip(variants, run(all_variants()), strict=True))
    listed = role_acls(role, "User:x")
    report = {
        f"{a.operation} {a.resource_type} {a.pattern} {a.name}": outcomes[cn]
        for cn, a in zip(variants, listed, strict=True)
    }
    print(role, report)  # shown with -s: what each missing ACL breaks
    assert all(outcome in REFUSALS for outcome in report.values()), report
