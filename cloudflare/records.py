"""The objects of Cloudflare's alerting API that cfn reads, as frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as Cloudflare writes it ("2026-12-01T10:00:00.123456Z"), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook destination (`/alerting/v3/destinations/webhooks`); its secret is write-only."""

    id: str
    name: str | None
    url: str | None
    type: str | None  # "generic" for cfn's
    created_at: datetime | None
    last_success: datetime | None  # the last delivery Cloudflare counted as delivered
    last_failure: datetime | None  # the last delivery attempt that failed

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Webhook:
        return cls(
            id=str(item.get("id", "")),
            name=_text(item, "name"),
            url=_text(item, "url"),
            type=_text(item, "type"),
            created_at=parse_time(item.get("created_at")),
            last_success=parse_time(item.get("last_success")),
            last_failure=parse_time(item.get("last_failure")),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """A notification policy (`/alerting/v3/policies`): one alert type, its filters, and where
    it is sent."""

    id: str
    name: str | None
    alert_type: str | None
    enabled: bool
    webhook_ids: tuple[str, ...]  # mechanisms.webhooks[].id
    raw: dict[str, Any]  # the policy as read, to write back what cfn does not manage

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Policy:
        mechanisms = item.get("mechanisms")
        hooks = mechanisms.get("webhooks") if isinstance(mechanisms, dict) else None
        ids = tuple(
            str(hook["id"]) for hook in hooks or () if isinstance(hook, dict) and "id" in hook
        )
        return cls(
            id=str(item.get("id", "")),
            name=_text(item, "name"),
            alert_type=_text(item, "alert_type"),
            enabled=item.get("enabled") is True,
            webhook_ids=ids,
            raw=item,
        )


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One notification Cloudflare sent through one mechanism (`/alerting/v3/history`).

    It carries no alert_correlation_id, alert_event or data: `alert_body` is the message text.
    """

    id: str
    alert_body: str | None
    alert_type: str | None
    description: str | None
    mechanism: str | None  # for a webhook: the destination's id
    mechanism_type: str | None  # email | pagerduty | webhook
    name: str | None  # the policy's name
    policy_id: str | None
    sent: datetime | None

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> HistoryRecord:
        body = item.get("alert_body")
        return cls(
            id=str(item.get("id", "")),
            alert_body=body if isinstance(body, str) or body is None else str(body),
            alert_type=_text(item, "alert_type"),
            description=_text(item, "description"),
            mechanism=_text(item, "mechanism"),
            mechanism_type=_text(item, "mechanism_type"),
            name=_text(item, "name"),
            policy_id=_text(item, "policy_id"),
            sent=parse_time(item.get("sent")),
        )


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence of one policy (`/alerting/v3/silences`): nothing is sent between the times."""

    id: str
    policy_id: str | None
    start_time: datetime | None
    end_time: datetime | None  # None: open-ended

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Silence:
        return cls(
            id=str(item.get("id", "")),
            policy_id=_text(item, "policy_id"),
            start_time=parse_time(item.get("start_time")),
            end_time=parse_time(item.get("end_time")),
        )

    def covers(self, policy_id: str | None, when: datetime) -> bool:
        """Whether this silence held `policy_id` quiet at `when`."""
        if policy_id is None or policy_id != self.policy_id:
            return False
        if self.start_time is not None and when < self.start_time:
            return False
        return self.end_time is None or when < self.end_time
