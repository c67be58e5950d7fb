"""The Kafka record key of a notification: every event of one incident shares a partition."""

from __future__ import annotations

from collections.abc import Mapping


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def incident_key(tenant: str, body: Mapping[str, object]) -> bytes:
    """Key for `cfn.raw`, derived from fields only, so a re-sent body always gets the same key.

    With an `alert_correlation_id`: `tenant|account_id|alert_correlation_id`. This is the
    correlation key itself, so START, END and re-notifications of one incident meet on one
    partition with no repartition.

    Without one (test messages, one-off types, Stream Live bodies):
    `tenant|account_id|-|alert_type|policy_id`, missing fields as empty strings. Such bodies never
    become incidents; the key only has to be stable for one content (dedup) and spread load
    across accounts and policies.
    """
    account = _text(body.get("account_id"))
    correlation = body.get("alert_correlation_id")
    if correlation:
        return f"{tenant}|{account}|{_text(correlation)}".encode()
    return (
        f"{tenant}|{account}|-|{_text(body.get('alert_type'))}|{_text(body.get('policy_id'))}"
    ).encode()
