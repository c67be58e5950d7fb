"""Which notifications of Cloudflare's history never reached `cfn.raw`: the match, pure.

A history record carries the message text (`alert_body`), the alert type, the policy and the
time Cloudflare sent it, but no correlation id, event or data; a webhook body carries `text`,
`alert_type`, `policy_id` and `ts`. A record counts as delivered when one raw body of its tenant,
not used by another record, has the same text, the same alert type and the same policy (a
field absent on either side matches anything) and reached cfn within `window` of `sent`
(before it by at most `skew`: clocks differ). Identical messages re-sent for an ongoing
incident (a policy's alert_interval) are several records and need as many bodies.

A record sent less than `grace` ago is pending, not missed: Cloudflare may still be retrying
it, and a backfill made then would be followed by the original. A record whose policy was
silenced when it was sent is silenced, not missed. A record whose backfill is already in
`cfn.raw` (its `cfn-history-id` header) is backfilled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cfn.cloudflare.records import HistoryRecord, Silence
from cfn.schemas import jsonio
from cfn.schemas.history import HISTORY, HISTORY_ID_HEADER, HISTORY_MARK, ORIGIN_HEADER


@dataclass(frozen=True, slots=True)
class Seen:
    """One body of `cfn.raw`, as far as the match needs it."""

    text: str | None
    alert_type: str | None
    policy_id: str | None
    received: datetime  # when the ingest accepted it
    history_id: str | None = None  # set on what reconcile wrote from the history

    @classmethod
    def from_raw(cls, value: bytes, received: datetime, headers: dict[str, bytes]) -> Seen | None:
        """From a raw record; None for a body that is no JSON object (it is in the DLQ) and
        for a backfill's copy for another partition (no delivery, no event)."""
        if headers.get(ORIGIN_HEADER) == HISTORY_MARK:
            return None
        try:
            body = jsonio.loads(value)
        except jsonio.JSONDecodeError:
            return None
        if not isinstance(body, dict):
            return None
        history = headers.get(HISTORY_ID_HEADER) if headers.get(ORIGIN_HEADER) == HISTORY else None

        def text(key: str) -> str | None:
            item = body.get(key)
            return item if isinstance(item, str) else None

        return cls(
            text("text"),
            text("alert_type"),
            text("policy_id"),
            received,
            history.decode(errors="replace") if history else None,
        )


@dataclass
class Outcome:
    """The history records of one tenant's destination, sorted by what became of them."""

    delivered: list[HistoryRecord] = field(default_factory=list)
    missed: list[HistoryRecord] = field(default_factory=list)
    backfilled: list[HistoryRecord] = field(default_factory=list)  # earlier, by reconcile
    silenced: list[HistoryRecord] = field(default_factory=list)
    pending: list[HistoryRecord] = field(default_factory=list)  # within the grace period


def _same(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def reconcile(
    history: Iterable[HistoryRecord],
    seen: Iterable[Seen],
    silences: Iterable[Silence],
    now: datetime,
    grace: timedelta,
    window: timedelta,
    skew: timedelta = timedelta(minutes=5),
) -> Outcome:
    """Sort the history records of one tenant's destination (already chosen: webhook, this
    destination) against the bodies `cfn.raw` holds for the tenant."""
    outcome = Outcome()
    bodies = [s for s in seen if s.history_id is None]
    bodies.sort(key=lambda s: s.received)
    backfilled = {s.history_id for s in seen if s.history_id is not None}
    used = [False] * len(bodies)
    quiet = list(silences)
    for record in sorted(history, key=lambda r: (r.sent or now, r.id)):
        sent = record.sent
        if sent is None:
            continue
        if any(s.covers(record.policy_id, sent) for s in quiet):
            outcome.silenced.append(record)
            continue
        found = _first(bodies, used, record, sent - skew, sent + window)
        if found is not None:
            used[found] = True
            outcome.delivered.append(record)
        elif record.id in backfilled:
            outcome.backfilled.append(record)
        elif sent > now - grace:
            outcome.pending.append(record)
        else:
            outcome.missed.append(record)
    return outcome


def _first(
    bodies: list[Seen], used: list[bool], record: HistoryRecord, start: datetime, end: datetime
) -> int | None:
    for index, body in enumerate(bodies):
        if used[index] or not start <= body.received <= end:
            continue
        if (
            body.text == record.alert_body
            and _same(body.alert_type, record.alert_type)
            and _same(body.policy_id, record.policy_id)
        ):
            return index
    return None


def backfill_body(record: HistoryRecord, account_id: str) -> bytes:
    """The body reconcile writes into `cfn.raw` for a missed record: the fields a webhook body
    shares with the history, in canonical JSON. The same record always gives the same bytes, so
    the worker's dedup gives it the same event id however often it is written."""
    body: dict[str, object] = {
        "account_id": account_id,
        "alert_type": record.alert_type,
        "name": record.name,
        "policy_id": record.policy_id,
        "text": record.alert_body,
        "ts": int(record.sent.timestamp()) if record.sent is not None else None,
        "cfn_history_id": record.id,
    }
    return jsonio.canonical({k: v for k, v in body.items() if v is not None})
