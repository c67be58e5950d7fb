"""Follow cfn's incidents as a subscriber: the open ones, kept current.

    python examples/consume_incidents.py --bootstrap 127.0.0.1:9092 [--prefix cfn.] [--idle 5]

What every subscriber of cfn.incidents needs, in one small program:
* read with isolation_level="read_committed": cfn writes in Kafka transactions, and only
  committed records are real (an aborted attempt is written again and committed once);
* keep the highest `version` per `incident_id`: a record is a whole incident version, and a
  replay or an older copy may arrive after a newer one;
* key on `incident_id`, not on the record key: one key (tenant|account|correlation id) can carry
  several incidents over time, each with its own id.

It prints one line per new incident version (opened, re-notified, resolved, expired), and the
incidents still open when it stops (after `--idle` quiet seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer


async def follow(bootstrap: str, topic: str, idle: float | None) -> dict[str, dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # a subscriber of your own would use its group and commit offsets
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    latest: dict[str, dict[str, Any]] = {}  # incident_id -> its highest version
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int((idle or 1.0) * 1000))
            if not batch and idle is not None:
                break
            for records in batch.values():
                for record in records:
                    incident = json.loads(record.value)
                    known = latest.get(incident["incident_id"])
                    if known is None or incident["version"] > known["version"]:
                        latest[incident["incident_id"]] = incident
                        print(
                            f"{incident['state']:<10} {incident['incident_id']} "
                            f"v{incident['version']} {incident['alert_type']} "
                            f"account={incident['account_id']}",
                            flush=True,
                        )
    finally:
        await consumer.stop()
    return {i: inc for i, inc in latest.items() if inc["state"] == "open"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--prefix", default="cfn.", help="CFN_TOPIC_PREFIX of the cfn to follow")
    parser.add_argument("--idle", type=float, help="stop after this many quiet seconds")
    args = parser.parse_args()
    try:
        still_open = asyncio.run(follow(args.bootstrap, f"{args.prefix}incidents", args.idle))
    except KeyboardInterrupt:
        return
    print(f"open: {len(still_open)}")
    for incident_id in sorted(still_open):
        print(f"open {incident_id}")


if __name__ == "__main__":
    main()
