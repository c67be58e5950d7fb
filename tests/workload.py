"""A realistic raw-topic workload: START/END pairs, one-offs, redeliveries, many accounts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cfn.schemas import jsonio
from cfn.schemas.keys import incident_key
from cfn.schemas.payload import Notification, parse

TYPES = (
    "health_check_status_notification",
    "advanced_ddos_attack_l7_alert",
    "dos_attack_l7",
    "real_origin_monitoring",
    "workers_alert",
)


@dataclass
class Workload:
    """Raw records as ingest would write them, plus what cfn must make of them."""

    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    unique_event_ids: set[str] = field(default_factory=set)
    pairs: int = 0

    def add(self, body: dict[str, object], received_ms: int, copies: int = 1) -> None:
        raw = jsonio.dumps(body)
        key = incident_key("default", body)
        for copy in range(copies):
            headers = [
                ("cfn-tenant", b"default"),
                ("cfn-received-at", str(received_ms + copy).encode()),
                ("cfn-request-id", f"r{len(self.records)}".encode()),
            ]
            self.records.append((key, raw, headers))
        parsed = parse(raw, "default", received_ms)
        assert isinstance(parsed, Notification)
        self.unique_event_ids.add(parsed.event_id)


def build(n_incidents: int, n_one_offs: int, now_ms: int, seed: int = 7) -> Workload:
    """START then END for each incident (some END first), one-offs, ~20% redelivered."""
    rng = random.Random(seed)
    work = Workload()
    items: list[tuple[dict[str, object], int]] = []
    for i in range(n_incidents):
        account = f"acc-{rng.randrange(500)}"
        alert_type = rng.choice(TYPES)
        start_ts = now_ms // 1000 - rng.randrange(600, 3600)
        common = {
            "name": "policy",
            "account_id": account,
            "policy_id": f"pol-{i % 37}",
            "policy_name": "policy",
            "alert_type": alert_type,
            "alert_correlation_id": f"corr-{seed}-{i}",
            "data": {"zone_name": f"z{i}.example", "value": str(rng.randrange(1000))},
        }
        start = {
            **common,
            "alert_event": "ALERT_STATE_EVENT_START",
            "ts": start_ts,
            "text": f"start {i}",
        }
        end = {
            **common,
            "alert_event": "ALERT_STATE_EVENT_END",
            "ts": start_ts + rng.randrange(30, 600),
            "text": f"end {i}",
        }
        items.append((start, 0))
        items.append((end, 1))
        work.pairs += 1
    for i in range(n_one_offs):
        items.append(
            (
                {
                    "name": "one-off",
                    "text": f"one-off {i}",
                    "account_id": f"acc-{rng.randrange(500)}",
                    "alert_type": rng.choice(TYPES),
                    "ts": now_ms // 1000 - rng.randrange(3600),
                    "data": {"n": i},
                },
                0,
            )
        )
    for position, (body, order) in enumerate(items):
        copies = 2 if rng.random() < 0.2 else 1
        work.add(body, now_ms + position * 2 + order, copies)
    return work
