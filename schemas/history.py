"""Records that `cfn reconcile --backfill` writes into `cfn.raw` from Cloudflare's Notification
History, and the key that lets the worker treat a late original webhook and its backfill as one
notification.

Both sides import this module: reconcile writes the headers, the worker reads them. A history
record has the message text, alert type, policy and the time Cloudflare sent it; the original
webhook body has the same text, type and policy, and Cloudflare's `ts`. The two meet on a
*notification key*: tenant, account, policy, alert type, text, and the time in buckets of
`MATCH_SLACK` seconds (a webhook's `ts` and its history record's `sent` are not promised to be
the same second).
"""

from __future__ import annotations

from cfn.schemas.records import short_hash

# Header of every record reconcile writes into cfn.raw, and its values.
ORIGIN_HEADER = "cfn-origin"
HISTORY = b"history"  # a backfill: the worker makes an event of it (origin "history")
HISTORY_MARK = b"history-mark"  # a copy for another partition: makes no event (below)
# The Notification History record's id, on both kinds.
HISTORY_ID_HEADER = "cfn-history-id"

# The `origin` of an event in cfn.events.
WEBHOOK_ORIGIN = "webhook"
HISTORY_ORIGIN = "history"

# A webhook whose `ts` is within this many seconds of a backfill's `sent` is its original (and
# none is more than twice this apart).
MATCH_SLACK = 300

# The prefix of notification keys in the worker's dedup table, beside event ids ("ev_").
KEY_PREFIX = "nk_"


def notification_key(
    tenant: str,
    account_id: str | None,
    policy_id: str | None,
    alert_type: str | None,
    text: str | None,
    bucket: int,
) -> str:
    """The key a backfill and its original share; absent and empty fields are the same."""
    return KEY_PREFIX + short_hash(
        tenant, account_id or "", policy_id or "", alert_type or "", text or "", str(bucket)
    )


def bucket_of(ts: int) -> int:
    """The time bucket of an epoch second (a webhook's `ts`, a backfill's `sent`)."""
    return ts // MATCH_SLACK
