"""Follow cfn's incidents as a subscriber: the open ones, kept current.

    python examples/consume_incidents.py --bootstrap 127.0.0.1:9092 [--prefix cfn.] [--idle 5]

What every subscriber of cfn's incidents needs, in one small program:
* start from cfn.incident-state, the compacted table of open and recently closed incidents
  (the latest version per incident_id, a null value once a closed one is forgotten), instead of
  replaying all of cfn.incidents;
* then follow cfn.incidents, from the end offsets taken *before* the table was read: every
  version committed after that point is followed, every one before it is in the table, and the
  overlap is harmless because of the next rule;
* keep the highest `version` per `incident_id`: a record is a whole incident version, and the
  table, a replay or an older copy may hold a version older than one already seen;
* read with isolation_level="read_committed": cfn writes in Kafka transactions, and only
  committed records are real (an aborted attempt is written again and committed once);
* key on `incident_id`, not on cfn.incidents' record key: one key (tenant|account|correlation
  id) can carry several incidents over time, each with its own id.

It prints what it bootstrapped, one line per newer incident version it then follows (opened,
re-notified, resolved, expired), and the incidents still open when it stops (after `--idle`
quiet seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


def reader(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,  # a subscriber of your own would use its group and commit offsets
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise SystemExit(f"no topic {topic} at {bootstrap}")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


def keep(latest: dict[str, dict[str, Any]], incident: dict[str, Any]) -> bool:
    """Keep `incident` if it is newer than what is known of it; True if it was."""
    known = latest.get(incident["incident_id"])
    if known is not None and incident["version"] <= known["version"]:
        return False
    latest[incident["incident_id"]] = incident
    return True


async def high_watermarks(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The end offsets of everything written so far, committed or not. A read_committed
    consumer's end_offsets stop at the first open transaction (the last stable offset), and a
    version committed after it by another task would be in neither read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def bootstrap_from_table(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    ends: dict[TopicPartition, int],
    latest: dict[str, dict[str, Any]],
) -> int:
    """Fold the table topic from its start to `ends`; returns the records read. Open
    transactions below `ends` are waited for: the read_committed position passes them once
    they are committed or aborted."""
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    table: dict[str, dict[str, Any] | None] = {}
    read = 0
    # The last offset may be a transaction marker that no consumer receives: compare positions.
    while any([await consumer.position(tp) < ends[tp] for tp in tps]):
        for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
            for record in records:
                if record.offset < ends[tp]:
                    read += 1
                    key = record.key.decode()
                    table[key] = None if record.value is None else json.loads(record.value)
    for incident in table.values():
        if incident is not None:  # None: a tombstone, the incident was forgotten
            keep(latest, incident)
    return read


async def follow(bootstrap: str, prefix: str, idle: float | None) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}  # incident_id -> its highest version
    history = reader(bootstrap)
    table = reader(bootstrap)
    await history.start()
    await table.start()
    try:
        tps = await partitions(bootstrap, f"{prefix}incidents")
        table_tps = await partitions(bootstrap, f"{prefix}incident-state")
        start = await history.end_offsets(tps)  # before the table is read: no gap between
        ends = await high_watermarks(bootstrap, table_tps)
        read = await bootstrap_from_table(table, table_tps, ends, latest)
        opened = sum(1 for i in latest.values() if i["state"] == "open")
        print(
            f"bootstrap: {len(latest)} incidents, {opened} open ({read} table records)", flush=True
        )
        history.assign(tps)
        for tp in tps:
            history.seek(tp, start[tp])
        while True:
            batch = await history.getmany(timeout_ms=int((idle or 1.0) * 1000))
            if not batch and idle is not None:
                break
            for records in batch.values():
                for record in records:
                    incident = json.loads(record.value)
                    if keep(latest, incident):
                        print(
                            f"{incident['state']:<10} {incident['incident_id']} "
                            f"v{incident['version']} {incident['alert_type']} "
                            f"account={incident['account_id']}",
                            flush=True,
                        )
    finally:
        await table.stop()
        await history.stop()
    return {i: inc for i, inc in latest.items() if inc["state"] == "open"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--prefix", default="cfn.", help="CFN_TOPIC_PREFIX of the cfn to follow")
    parser.add_argument("--idle", type=float, help="stop after this many quiet seconds")
    args = parser.parse_args()
    try:
        still_open = asyncio.run(follow(args.bootstrap, args.prefix, args.idle))
    except KeyboardInterrupt:
        return
    print(f"open: {len(still_open)}")
    for incident_id in sorted(still_open):
        print(f"open {incident_id}")


if __name__ == "__main__":
    main()
