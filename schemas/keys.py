"""The keys of an incident, in one place: the Kafka record key of its notifications (every event
of one incident shares a partition) and the worker's table key for it."""

from __future__ import annotations

from collections.abc import Mapping

from cfn.schemas import jsonio


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
        return incident_record_key(tenant, account, _text(correlation))
    return (
        f"{tenant}|{account}|-|{_text(body.get('alert_type'))}|{_text(body.get('policy_id'))}"
    ).encode()


def incident_record_key(tenant: str, account_id: str | None, correlation_id: str) -> bytes:
    """The record key of an incident's notifications, from its fields (`incident_key` of any of
    its bodies): the key of its `cfn.incidents` records."""
    return f"{tenant}|{account_id or ''}|{correlation_id}".encode()


def correlation_key(tenant: str, account_id: str | None, correlation_id: str) -> str:
    """The worker's table key of one incident: a JSON array, so no field value can forge
    another's. It is hashed into `incident_id`, so its form never changes."""
    return jsonio.dumps([tenant, account_id or "", correlation_id]).decode()
