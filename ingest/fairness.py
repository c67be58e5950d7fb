"""Admission by tenant: each tenant's guaranteed share of the in-flight slots, its cap, its rate.

Pure logic over plain counters: no HTTP, no Kafka, no metrics, and the time is passed in, so the
tests drive it with numbers. The app asks `Admission.admit` before it reads a body and calls
`Admission.release` once the request is answered. The scheme (docs/fairness.md):

* `max_inflight` (CFN_INGEST_MAX_INFLIGHT) bounds all tenants together;
* each configured tenant is guaranteed `min(its limit, max_inflight // tenants)` slots, which no
  other tenant can take;
* what the guarantees leave over is a shared pool; a tenant above its guarantee borrows from it,
  first come first served, up to its own limit;
* a tenant with a rate also spends one token of its bucket per admitted request.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

log = logging.getLogger("cfn.ingest")

# A tenant counts as throttled from its first refusal until it has gone this long without one;
# one log line at each end of that episode, none per request.
QUIET_SECONDS = 5.0

# Why a request was refused: the value of the `reason` label and a word of the 429's message.
LIMIT = "limit"  # the tenant has its own max_inflight in flight
SHARE = "share"  # the tenant is above its guarantee and the shared pool is in use
RATE = "rate"  # the tenant's token bucket is empty
GLOBAL = "global"  # CFN_INGEST_MAX_INFLIGHT in flight, all tenants together
REASONS = (LIMIT, SHARE, RATE, GLOBAL)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One tenant's limits as configured; None means "the default" (CFN_INGEST_TENANT_*).

    Attributes:
        max_inflight: the most requests of this tenant in flight at once (>= 1).
        rate: admitted requests per second, refilled continuously; 0 means no rate limit.
        burst: the bucket's size, the requests admitted at once after a quiet spell (>= 1).
    """

    max_inflight: int | None = None
    rate: float | None = None
    burst: int | None = None

    def over(self, defaults: TenantLimits) -> TenantLimits:
        """These limits with every unset field taken from `defaults`."""
        return TenantLimits(
            self.max_inflight if self.max_inflight is not None else defaults.max_inflight,
            self.rate if self.rate is not None else defaults.rate,
            self.burst if self.burst is not None else defaults.burst,
        )


class TenantSlots:
    """One tenant's admission state; the object lives across reloads, so its counts stay true.

    Attributes:
        name: the tenant.
        limit: its cap on requests in flight (never above the global cap).
        guaranteed: the slots no other tenant can take from it.
        inflight: its requests being handled now.
        rate: tokens per second (0: no rate limit); burst: the bucket's size.
    """

    __slots__ = (
        "burst",
        "episode_refused",
        "episode_started",
        "guaranteed",
        "inflight",
        "last_refused",
        "limit",
        "name",
        "rate",
        "refilled",
        "throttled",
        "tokens",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.limit = 0
        self.guaranteed = 0
        self.inflight = 0
        self.rate = 0.0
        self.burst = 1
        self.tokens = 0.0
        self.refilled: float | None = None  # when tokens was last brought up to date
        self.throttled = False
        self.episode_started = 0.0
        self.last_refused = 0.0
        self.episode_refused = 0

    def __repr__(self) -> str:
        return (
            f"TenantSlots({self.name!r}, inflight={self.inflight}, limit={self.limit}, "
            f"guaranteed={self.guaranteed}, rate={self.rate:g}, burst={self.burst})"
        )


class Admission:
    """Decides which tenant's request may start, so one tenant's flood cannot take every slot.

    Use one per event loop (it takes no lock). It trades utilisation for isolation: a tenant's
    guaranteed slots stay free for it even while it sends nothing, so one busy tenant among many
    idle ones gets its own share plus the pool, not the whole ingest.

    Args:
        max_inflight: all tenants' requests in flight together (CFN_INGEST_MAX_INFLIGHT).
        defaults: the limits of a tenant that sets none (CFN_INGEST_TENANT_*); a None
            max_inflight means the global cap, a None or 0 rate means no rate limit.
    """

    def __init__(self, max_inflight: int, defaults: TenantLimits) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.max_inflight = max_inflight
        self.defaults = defaults
        self.inflight = 0  # all tenants
        self.borrowed = 0  # sum over tenants of max(0, inflight - guaranteed)
        self.pool = max_inflight  # the slots no guarantee holds
        self.tenants: dict[str, TenantSlots] = {}

    def configure(self, tenants: Mapping[str, TenantLimits]) -> None:
        """Apply a (re)loaded configuration: every tenant's limit, guarantee and bucket.

        A tenant that stays keeps its counts and its bucket's tokens; one that is gone keeps
        only what its requests in flight need to finish (the global count still covers them).
        """
        share = self.max_inflight // max(1, len(tenants))
        kept: dict[str, TenantSlots] = {}
        for name, configured in tenants.items():
            limits = configured.over(self.defaults)
            slots = self.tenants.get(name) or TenantSlots(name)
            limit = self.max_inflight if limits.max_inflight is None else limits.max_inflight
            slots.limit = min(limit, self.max_inflight)
            slots.guaranteed = min(slots.limit, share)
            rate = limits.rate or 0.0
            burst = limits.burst if limits.burst is not None else max(1, round(rate))
            if (rate, burst) != (slots.rate, slots.burst):
                slots.rate, slots.burst = rate, burst
                slots.tokens, slots.refilled = float(burst), None  # a full bucket to start
            kept[name] = slots
        for name, gone in self.tenants.items():
            if name not in kept:
                gone.limit = 0
                gone.guaranteed = sys.maxsize  # its last releases never touch `borrowed`
        self.tenants = kept
        self.pool = self.max_inflight - sum(s.guaranteed for s in kept.values())
        self.borrowed = sum(max(0, s.inflight - s.guaranteed) for s in kept.values())

    def admit(self, slots: TenantSlots, now: float) -> str | None:
        """Take a slot for one request of `slots`' tenant at time `now` (seconds, monotonic).

        Returns:
            None when admitted (call `release` once answered), else the reason (LIMIT, SHARE,
            RATE or GLOBAL) to answer 429 with; a refusal takes nothing.
        """
        if self.inflight >= self.max_inflight:
            return self._refused(slots, GLOBAL, now)
        held = slots.inflight
        if held >= slots.limit:
            return self._refused(slots, LIMIT, now)
        borrowing = held >= slots.guaranteed
        if borrowing and self.borrowed >= self.pool:
            return self._refused(slots, SHARE, now)
        if slots.rate:
            refilled = slots.refilled
            tokens = slots.tokens
            if refilled is not None:
                tokens = min(float(slots.burst), tokens + (now - refilled) * slots.rate)
            slots.refilled = now
            if tokens < 1.0:
                slots.tokens = tokens
                return self._refused(slots, RATE, now)
            slots.tokens = tokens - 1.0
        if borrowing:
            self.borrowed += 1
        slots.inflight = held + 1
        self.inflight += 1
        return None

    def release(self, slots: TenantSlots) -> None:
        """Give back the slot `admit` took for a request of `slots`' tenant."""
        if slots.inflight > slots.guaranteed:
            self.borrowed -= 1
        slots.inflight -= 1
        self.inflight -= 1

    def _refused(self, slots: TenantSlots, reason: str, now: float) -> str:
        slots.last_refused = now
        slots.episode_refused += 1
        if not slots.throttled:
            slots.throttled = True
            slots.episode_started = now
            log.warning(
                "tenant %r throttled (%s): %s", slots.name, reason, self.describe(slots, reason)
            )
        return reason

    def sweep(self, now: float) -> None:
        """End the throttling episodes with no refusal for QUIET_SECONDS (one log line each)."""
        for slots in self.tenants.values():
            if slots.throttled and now - slots.last_refused >= QUIET_SECONDS:
                slots.throttled = False
                log.info(
                    "tenant %r no longer throttled: %d request(s) refused over %.1f s",
                    slots.name,
                    slots.episode_refused,
                    slots.last_refused - slots.episode_started,
                )
                slots.episode_refused = 0

    def __iter__(self) -> Iterator[TenantSlots]:
        return iter(self.tenants.values())

    def describe(self, slots: TenantSlots, reason: str) -> str:
        """The 429's message for `reason`: the tenant's own limits, nothing else."""
        name = slots.name
        if reason == LIMIT:
            return f"tenant {name!r} has its max_inflight of {slots.limit} requests in flight"
        if reason == SHARE:
            return (
                f"tenant {name!r} has its guaranteed {slots.guaranteed} requests in flight and "
                f"no shared slot is free (its max_inflight is {slots.limit}); the other slots "
                "are kept for other tenants"
            )
        if reason == RATE:
            return f"tenant {name!r} is over its rate of {slots.rate:g}/s (burst {slots.burst})"
        return f"ingest is at CFN_INGEST_MAX_INFLIGHT ({self.max_inflight} requests in flight)"
