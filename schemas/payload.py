"""Classifying and parsing one raw webhook body into a Notification or a reasoned rejection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cfn.schemas import jsonio
from cfn.schemas.records import short_hash

TEST_PREFIX = "Hello World! This is a test message sent from https://cloudflare.com"
EVENT_NAMES = {"ALERT_STATE_EVENT_START": "start", "ALERT_STATE_EVENT_END": "end"}
STRING_FIELDS = ("name", "text", "account_id", "policy_id", "policy_name", "alert_type")
# Anything outside [2000-01-01, 2100-01-01) is not a Cloudflare timestamp in seconds.
TS_MIN, TS_MAX = 946_684_800, 4_102_444_800


@dataclass(slots=True)
class Notification:
    """A body that parsed: the fields cfn works with, normalised, plus the body as received."""

    event_id: str  # "ev_" + fingerprint (see `fingerprint`)
    kind: str  # "alert" or "test"
    tenant: str
    account_id: str | None
    policy_id: str | None
    policy_name: str | None
    alert_type: str | None
    event: str | None  # "start" | "end" | alert_event as received | None
    correlation_id: str | None
    ts: int  # event time in epoch seconds; received_at when the body had no ts
    received_at: int  # epoch ms
    name: str | None
    text: str | None
    data: Any


@dataclass(slots=True)
class Rejected:
    """A body that cannot become an event: a reason code and a message naming the field."""

    reason: str  # invalid_json | not_an_object | bad_ts | bad_field
    detail: str


def fingerprint(tenant: str, body: dict[str, Any]) -> str:
    """The dedup identity: sha256 over the tenant and the canonical JSON of the whole body.

    Canonical JSON sorts keys at every depth and drops whitespace, so a redelivery that
    reorders keys is still the same notification. Every field counts, `ts` included: a
    re-notification of an ongoing incident carries a new `ts` and is therefore a new event.
    """
    return short_hash(tenant, jsonio.canonical(body))


def _text_field(body: dict[str, Any], key: str) -> str | Rejected | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return Rejected("bad_field", f"at $.{key}: expected a string, got a boolean")
    if isinstance(value, int | float):
        return str(value)  # "numbers as strings" happens the other way round too
    return Rejected("bad_field", f"at $.{key}: expected a string, got {type(value).__name__}")


def _timestamp(value: Any, received_at: int) -> int | Rejected:
    if value is None:
        return received_at // 1000
    if isinstance(value, bool):
        return Rejected("bad_ts", "at $.ts: expected epoch seconds, got a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return Rejected("bad_ts", f"at $.ts: {value[:40]!r} is not a number")
    if not isinstance(value, int | float):
        return Rejected("bad_ts", f"at $.ts: expected epoch seconds, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        return Rejected("bad_ts", f"at $.ts: {value} is not a finite number")
    seconds = int(value)
    if TS_MIN * 1000 <= seconds < TS_MAX * 1000:
        seconds //= 1000  # milliseconds: accept, but store seconds as documented
    if not TS_MIN <= seconds < TS_MAX:
        return Rejected("bad_ts", f"at $.ts: {seconds} is outside 2000..2100 in epoch seconds")
    return seconds


def is_test_message(body: dict[str, Any]) -> bool:
    """Cloudflare's destination "Save and Test" body: a `text` greeting and no alert fields."""
    text = body.get("text")
    return (
        isinstance(text, str)
        and text.startswith(TEST_PREFIX)
        and "alert_type" not in body
        and "alert_correlation_id" not in body
    )


def parse(raw: bytes, tenant: str, received_at: int) -> Notification | Rejected:
    """Parse one raw body. Never raises for any input bytes.

    Args:
        raw: the exact bytes ingest received.
        tenant: the tenant ingest resolved from the secret.
        received_at: epoch ms when ingest accepted it.

    Returns:
        A Notification, or Rejected with a reason code for the dead-letter topic.
    """
    try:
        body = jsonio.loads(raw)
    except jsonio.JSONDecodeError as exc:
        return Rejected("invalid_json", f"not valid JSON: {exc}")
    if not isinstance(body, dict):
        return Rejected("not_an_object", f"JSON {type(body).__name__}, not an object")
    fields: dict[str, str | None] = {}
    for key in STRING_FIELDS:
        value = _text_field(body, key)
        if isinstance(value, Rejected):
            return value
        fields[key] = value
    correlation = _text_field(body, "alert_correlation_id")
    if isinstance(correlation, Rejected):
        return correlation
    raw_event = _text_field(body, "alert_event")
    if isinstance(raw_event, Rejected):
        return raw_event
    ts = _timestamp(body.get("ts"), received_at)
    if isinstance(ts, Rejected):
        return ts
    try:
        event_id = "ev_" + fingerprint(tenant, body)
    except (TypeError, ValueError):
        # orjson reads 1024 levels of nesting but writes only ~254: such a body cannot be
        # fingerprinted, so it cannot be deduplicated; keep it whole in the DLQ instead.
        return Rejected("bad_field", "at $: the body is nested too deeply to fingerprint")
    return Notification(
        event_id=event_id,
        kind="test" if is_test_message(body) else "alert",
        tenant=tenant,
        account_id=fields["account_id"],
        policy_id=fields["policy_id"],
        policy_name=fields["policy_name"],
        alert_type=fields["alert_type"],
        event=EVENT_NAMES.get(raw_event, raw_event) if raw_event is not None else None,
        correlation_id=correlation or None,
        ts=ts,
        received_at=received_at,
        name=fields["name"],
        text=fields["text"],
        data=body.get("data"),
    )
