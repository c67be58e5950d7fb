"""Creating cfn's topics at startup, with the partition count the keying relies on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from aiokafka.structs import TopicPartition

from cfn import internals
from cfn.kafka import aiokafka_options
from cfn.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

RAW_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


def topic_config(role: str, replication: int) -> dict[str, str]:
    """Per-topic settings: the raw log keeps large bodies, changelogs and cfn.incident-state are
    compacted, and RF>=3 gets min.insync.replicas=2."""
    config: dict[str, str] = {}
    if role in ("raw", "dlq"):
        config["max.message.bytes"] = str(RAW_MAX_MESSAGE_BYTES)
    if role == "changelog":
        config["cleanup.policy"] = "compact"
    if role == "incident-state":
        # A table topic: the latest record per incident_id, tombstones for the forgotten. Day
        # segments let the cleaner reach closed incidents soon after their tombstones.
        config["cleanup.policy"] = "compact"
        config["segment.ms"] = str(24 * 3600 * 1000)
    if replication >= 3:
        config["min.insync.replicas"] = "2"
    return config


async def _visible(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> None:
    """Wait until every partition of the new topics answers its leader's ListOffsets.

    A client that asks sooner is told the topic does not exist, or, once the metadata names a
    leader, that the leader is not the leader yet: aiokafka's consumer then logs an error and
    retries its offset lookups with back-off. Waiting here costs no time: the broker creating
    the partitions is what takes it.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    waiting: list[str] = list(names)
    while True:
        cluster = await internals.fetch_metadata(admin)  # no public metadata call on admin
        by_leader: dict[int, list[TopicPartition]] = {}
        for name in names:
            for p in cluster.partitions_for_topic(name) or ():
                tp = TopicPartition(name, p)
                by_leader.setdefault(cluster.leader_for_partition(tp), []).append(tp)
        known = all(cluster.partitions_for_topic(n) for n in names)
        if known and not set(by_leader) & {None, -1}:
            answers = await asyncio.gather(
                *(
                    internals.list_offsets_errors(admin, leader, tps)
                    for leader, tps in by_leader.items()
                )
            )
            waiting = sorted({tp.topic for errors in answers for tp in errors})
            if not waiting:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics {waiting} created but their partitions are not ready")
        await asyncio.sleep(0.05)


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[tuple[str, str]],
    partitions: int,
    replication: int,
    timeout_ms: int = 10_000,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create each (role, name) topic that does not exist yet; return the names created.

    An existing topic is left as it is (its partition count is the operator's decision), but a
    mismatch is logged, because keyed co-partitioning depends on it.
    """
    admin = AIOKafkaAdminClient(
        **aiokafka_options(bootstrap, security, request_timeout_ms=timeout_ms)
    )
    internals.check_admin(admin)
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [(role, name) for role, name in topics if name not in existing]
        # One request for all of them, not one per topic.
        verdicts = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name, partitions, replication, topic_configs=topic_config(role, replication)
                    )
                    for role, name in missing
                ]
            )
            order = {name: i for i, (_role, name) in enumerate(missing)}
            # In request order: the first refused topic named is the first asked for.
            verdicts = sorted(response.topic_errors, key=lambda v: order.get(v[0], len(order)))
        # The admin client returns the broker's verdict per topic; it raises nothing.
        for verdict in verdicts:
            name, code = verdict[0], verdict[1]
            if code == 0:
                created.append(name)
            elif code == TopicAuthorizationFailedError.errno:
                raise TopicAuthorizationFailedError(
                    f"{name} is not visible to this principal (DESCRIBE) and it may not "
                    "create it (CREATE): grant DESCRIBE, and create the topic beforehand"
                )
            elif code != TopicAlreadyExistsError.errno:  # another process was first: fine
                message = verdict[2] if len(verdict) > 2 and verdict[2] else ""
                raise for_code(code)(f"creating {name}: {message}".rstrip(": "))
        if created:
            await _visible(admin, created, timeout_ms / 1000)
    finally:
        await admin.close()
    if created:
        log.info("created topics %s (%d partitions, RF %d)", created, partitions, replication)
    return created
