"""Real payload shapes: every example in Cloudflare's payload schema page, plus variants."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio

# Cloudflare's docs page, vendored (vendor/README.md).
SEED_SCHEMA = Path(__file__).resolve().parents[1] / "vendor" / "seeds" / "webhook-payload-schema.md"

SAVE_AND_TEST = (
    b'{"text":"Hello World! This is a test message sent from https://cloudflare.com. '
    b'If you can see this, your webhook is configured properly."}'
)

STREAM_LIVE = {
    "name": "Stream Live notifications",
    "text": "Stream Live input abc123 is connected",
    "data": {"input_id": "abc123", "event_type": "live_input.connected"},
    "ts": 1700000000,
}

SSL_NESTED = {
    "name": "SSL",
    "text": "Certificate validation failed",
    "account_id": "acc-ssl",
    "policy_id": "p-ssl",
    "policy_name": "SSL policy",
    "alert_type": "universal_ssl_event_type",
    "data": {
        "data": {"hostname": "example.com", "status": "pending_validation"},
        "metadata": {"event": {"type": "ssl.certificate.validation.failed"}},
    },
    "ts": "1700000100",
}


@cache
def seed_examples() -> tuple[bytes, ...]:
    """The JSON bodies shown in the seed page, as the exact bytes of each code block."""
    text = SEED_SCHEMA.read_text()
    bodies: list[bytes] = []
    for block in re.findall(r"```(?:json)?\n(.*?)```", text, flags=re.S):
        try:
            parsed = jsonio.loads(block)
        except ValueError:
            continue
        if isinstance(parsed, dict) and "@context" not in parsed:
            bodies.append(block.strip().encode())
    assert len(bodies) >= 7, f"expected the seed page's examples, found {len(bodies)}"
    return tuple(bodies)


def alert(
    *,
    account: str = "acc-1",
    correlation: str | None = "corr-1",
    event: str | None = "ALERT_STATE_EVENT_START",
    alert_type: str | None = "health_check_status_notification",
    ts: int | str = 1_700_000_000,
    **extra: Any,
) -> dict[str, Any]:
    """A realistic envelope; pass None to leave a field out."""
    body: dict[str, Any] = {
        "name": "Origin health",
        "text": f"Origin {event} for {account}",
        "data": {"zone_name": "example.com", "new_status": "Unhealthy"},
        "ts": ts,
        "account_id": account,
        "policy_id": "pol-1",
        "policy_name": "Origin health",
        "alert_type": alert_type,
        "alert_correlation_id": correlation,
        "alert_event": event,
    }
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def encode(body: dict[str, Any]) -> bytes:
    return jsonio.dumps(body)
