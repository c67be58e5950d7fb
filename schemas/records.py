"""The records cfn writes downstream; each field is documented where it is defined.

Every record carries a deterministic id derived from its inputs, so a replay or a restart
produces the same ids, and `schema_version`, bumped on any incompatible change. The JSON Schema
files beside this module describe the same shapes; a test keeps both in step.

The classes are plain (not frozen) slotted dataclasses, to be treated as values: a frozen
dataclass pays an `object.__setattr__` per field on construction, several times the cost of a
plain one, and the worker builds several records per event.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1


def short_hash(*parts: str | bytes) -> str:
    """32 hex chars of sha256 over the NUL-joined parts: stable across processes and runs."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@dataclass(slots=True)
class Source:
    """Where a record came from in `cfn.raw` (or the ingest request for ingest dead letters)."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class DlqRecord:
    """A body that could not become an event, kept whole so it can be fixed and replayed."""

    dlq_id: str  # ingest: "dlq_" + request id; worker: hash of the source position
    reason: str  # a code: invalid_json, not_an_object, bad_ts, bad_field, ...
    detail: str  # a human explanation naming the field ("at $.ts: ...")
    stage: str  # "ingest" or "worker"
    tenant: str | None
    received_at: int | None  # epoch ms at ingest
    source: Source | None  # None at ingest (the bytes never reached cfn.raw)
    raw_b64: str  # the original bytes, base64
    raw_size: int
    schema_version: int = SCHEMA_VERSION

    @staticmethod
    def encode_raw(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")


@dataclass(slots=True)
class EventRecord:
    """One unique notification (after dedup), in `cfn.events`."""

    event_id: str  # "ev_" + fingerprint: the same content for the same tenant, the same id
    kind: str  # "alert" or "test" (Cloudflare's Save-and-Test message)
    tenant: str
    account_id: str | None
    policy_id: str | None
    policy_name: str | None
    alert_type: str | None
    event: str | None  # "start" | "end" | the alert_event as received | None
    correlation_id: str | None
    ts: int | None  # event time, epoch seconds, as Cloudflare stamped it
    received_at: int  # epoch ms when ingest accepted it
    name: str | None
    text: str | None
    data: Any  # as received
    catalog: dict[str, str | None] | None  # None for unknown alert types
    source: Source
    # "webhook": Cloudflare posted it to the ingest; "history": `cfn reconcile --backfill` wrote
    # it from the Notification History (text only: no correlation id, alert_event or data).
    origin: str = "webhook"
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class IncidentRecord:
    """One version of an incident in `cfn.incidents`; (incident_id, version) is unique."""

    incident_id: str  # hash of tenant, account, correlation id and the first event's id
    version: int  # 1, 2, ... rises with each change of this incident
    state: str  # open | resolved | orphan_end | expired
    tenant: str
    account_id: str | None
    alert_type: str | None
    correlation_id: str
    opened_at: int | None  # START ts (epoch s); None for an orphan END
    closed_at: int | None  # END ts, or the expiry time for expired
    duration_s: int | None  # END ts - START ts; None until a real END is seen (expiry is no END)
    close_reason: str | None  # end | stale_timeout | orphan_end | None while open
    renotify_count: int  # repeated STARTs while open
    ordering: str  # in_order | end_before_start
    late_end: bool  # an END arrived after the incident expired
    first_event_id: str
    last_event_id: str
    catalog: dict[str, str | None] | None
    flap_id: str | None = None  # the flap episode this incident is a cycle of (cfn.flaps)
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class RateRecord:
    """The count of unique events in one closed tumbling window, in `cfn.rates`."""

    rate_id: str  # hash of scope, alert_type, account_id, window_start, window_s
    revision: int  # 1 when the window closes; +1 for each correction by a late event
    scope: str  # "type" or "account_type"
    alert_type: str | None
    account_id: str | None  # only for scope "account_type"
    window_start: int  # epoch s, inclusive
    window_end: int  # epoch s, exclusive
    window_s: int
    count: int
    rate_per_min: float
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class AnomalyRecord:
    """An anomaly of one (account_id, alert_type)'s window counts opening or closing, in
    `cfn.anomalies` (processors/anomaly.py says how it is judged)."""

    anomaly_id: str  # "an_" + hash of alert_type, account_id, window_s and the opening window
    state: str  # "open" (the window that opened it) or "closed" (the window that closed it)
    alert_type: str | None
    account_id: str | None
    window_s: int  # the size of the windows judged (CFN_ANOMALY_WINDOW)
    opened_window_start: int  # epoch s: the window that opened it
    window_start: int  # epoch s: the window this record is about
    window_end: int
    count: int  # that window's final count of unique events
    baseline: float  # the EWMA baseline it was judged against (events per window)
    ratio: float  # count / max(baseline, floor)
    threshold: float  # CFN_ANOMALY_FACTOR
    opening_baseline: float  # the baseline when it opened
    peak_count: int  # the highest count while open
    windows: int  # windows from the opening one to this one, both included
    schema_version: int = SCHEMA_VERSION


@dataclass(slots=True)
class FlapRecord:
    """A flap episode of one (tenant, account_id, policy_id, alert_type) starting or ending, in
    `cfn.flaps` (processors/flapping.py says when)."""

    flap_id: str  # "fl_" + hash of the flap key and the episode's first cycle
    state: str  # "start" or "end"
    tenant: str
    account_id: str | None
    policy_id: str | None
    alert_type: str | None
    started_at: int  # epoch s: the START ts of the opening that made it an episode
    ended_at: int | None  # epoch s: the last opening + CFN_FLAP_QUIET; None on "start"
    cycles: int  # incidents opened in the episode so far
    first_incident_id: str
    last_incident_id: str
    window_s: int  # CFN_FLAP_WINDOW
    quiet_s: int  # CFN_FLAP_QUIET
    schema_version: int = SCHEMA_VERSION
