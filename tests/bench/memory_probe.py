"""Resident memory per live key of the worker's state classes, in one process.

Kinds:
  dict      baseline: {event_id: int}, the least any "seen this id" store can hold
  dedup     processors.dedup.Deduplicator: the store plus its expiry index
  correlate processors.correlate.Correlator: open incidents (one START each) plus timers

dedup and correlate fill the worker's own tables (`changelog_tables`, processors/worker.py),
drained as a commit does every `COMMIT_EVERY` keys, with the incidents table's changelog
encoding. Every key, string and number is a fresh object, as parsing real records makes them.
Prints JSON: RSS (VmRSS) before and after, bytes per key, keys per second.

Run: python -m tests.bench.memory_probe KIND N
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio

TYPES = (
    "health_check_status_notification",
    "advanced_ddos_attack_l7_alert",
    "dos_attack_l7",
    "real_origin_monitoring",
    "workers_alert",
)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def event_id(i: int) -> str:
    return "ev_" + hashlib.sha256(i.to_bytes(8, "little")).hexdigest()[:32]


COMMIT_EVERY = 1000  # keys between drains of the changed keys, as the engine's commits do
PARTITIONS = 12


def commit(table: Any) -> None:
    """What the engine does with a table at each commit, short of sending the records."""
    for partition in range(PARTITIONS):
        for _key, value in table.drain(partition):
            table.encode(value)


def fill_dict(n: int, now: int) -> Any:
    store: dict[str, int] = {}
    for i in range(n):
        store[event_id(i)] = now + i // 1000
    return store


def fill_dedup(n: int, now: int) -> Any:
    from cfn.processors.dedup import Deduplicator
    from cfn.processors.worker import changelog_tables

    table = changelog_tables()["dedup"]
    dedup = Deduplicator(table, 24 * 3600.0)
    for i in range(n):
        assert not dedup.is_duplicate(event_id(i), now + i // 1000, i % PARTITIONS)
        if i % COMMIT_EVERY == COMMIT_EVERY - 1:
            commit(table)
    commit(table)
    return dedup


def fill_correlate(n: int, now: int) -> Any:
    from cfn.processors.correlate import Correlator
    from cfn.processors.worker import changelog_tables
    from cfn.schemas.payload import Notification

    table = changelog_tables()["incidents"]
    correlator = Correlator(
        table, stale_after=lambda _t: 24 * 3600.0, orphan_hold_s=600.0, closed_retention_s=86400.0
    )
    tenant = b"default"
    for i in range(n):
        notification = Notification(
            event_id=event_id(i),
            kind="alert",
            tenant=tenant.decode(),
            account_id=f"{i % 5000:032x}",
            policy_id=f"pol-{i % 37}",
            policy_name="Production origin health",
            alert_type=TYPES[i % len(TYPES)].encode().decode(),
            event="start",
            correlation_id=f"corr-{i:012d}",
            ts=now - 60 + i // 1000,
            received_at=(now + i // 1000) * 1000,
            name="Origin health alert",
            text="Origin is unhealthy",
            data={"zone_name": "shop.example.com"},
        )
        assert len(correlator.on_event(notification, i % PARTITIONS)) == 1
        if i % COMMIT_EVERY == COMMIT_EVERY - 1:
            commit(table)
    commit(table)
    return correlator


FILLERS = {"dict": fill_dict, "dedup": fill_dedup, "correlate": fill_correlate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(FILLERS))
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    fill = FILLERS[args.kind]
    fill(10, 1_700_000_000)  # import everything and warm up before the first reading
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    kept = fill(args.n, 1_700_000_000)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    result = {
        "kind": args.kind,
        "keys": args.n,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_key": (after - before) / args.n,
        "keys_per_s": args.n / seconds,
        "live": len(kept.store) if hasattr(kept, "store") else len(kept),
    }
    sys.stdout.write(jsonio.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
