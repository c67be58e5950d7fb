"""A small typed async client of Cloudflare's alerting API (aiohttp): Bearer auth, retries with
backoff on 429 and 5xx that honour Retry-After, and the history's pages."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from cfn.cloudflare.errors import ApiError, CloudflareError, PermissionDenied, Unreachable
from cfn.cloudflare.records import HistoryRecord, Policy, Silence, Webhook
from cfn.schemas import jsonio

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
READ, WRITE = "Notifications Read", "Notifications Write"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a 429, a 5xx or an unreachable API is retried.

    Attributes:
        attempts: calls in all, the first included.
        base: the first backoff in seconds; it doubles with each retry, up to `cap`, with up to
            +50% jitter.
        cap: the longest backoff, and the longest Retry-After honoured (a longer one is cut).
        timeout: seconds one call may take.
    """

    attempts: int = 5
    base: float = 0.5
    cap: float = 60.0
    timeout: float = 30.0

    def backoff(self, retry: int, retry_after: float | None, jitter: float) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...): never less than the
        server's Retry-After."""
        own = min(self.cap, self.base * 2.0 ** (retry - 1)) * (1 + jitter / 2)
        return max(own, min(retry_after, self.cap)) if retry_after is not None else own


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def rfc3339(when: datetime) -> str:
    """A UTC timestamp as the history's `since` and `before` take it."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AlertingClient:
    """One Cloudflare account's alerting API.

    Use one per account inside `async with`; the session is shared by every call. The token is
    asked of `token` before each call (cfn reads it from its file then), so it is never stored.

    Args:
        session: the aiohttp session (the caller owns it).
        base: the API's base URL (CFN_CLOUDFLARE_API_BASE).
        account_id: the account.
        token: returns the API token.
        retry: the retry policy.
        sleep: injected for tests.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        account_id: str,
        token: Callable[[], str],
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self._base = base.rstrip("/")
        self.account_id = account_id
        self._token = token
        self._retry = retry
        self._sleep = sleep
        self._jitter = random.Random()  # noqa: S311 (spreading retries, not a secret)

    # ---- webhook destinations -----------------------------------------------------------------

    async def webhooks(self) -> list[Webhook]:
        """Every webhook destination of the account."""
        body = await self._call("GET", "/destinations/webhooks", READ)
        return [Webhook.from_api(item) for item in _items(body)]

    async def webhook(self, webhook_id: str) -> Webhook:
        """One destination, with its last_success and last_failure."""
        body = await self._call("GET", f"/destinations/webhooks/{webhook_id}", READ)
        result = body.get("result")
        return Webhook.from_api(result if isinstance(result, dict) else {})

    async def create_webhook(self, name: str, url: str, secret: str) -> str:
        """Create a destination; Cloudflare sends its test POST with `secret` first.

        Returns:
            The new destination's id.
        """
        payload = {"name": name, "url": url, "secret": secret}
        return _id(await self._call("POST", "/destinations/webhooks", WRITE, payload))

    async def update_webhook(self, webhook_id: str, name: str, url: str, secret: str) -> None:
        """Replace a destination's name, URL and secret (Cloudflare sends a test POST first)."""
        payload = {"name": name, "url": url, "secret": secret}
        await self._call("PUT", f"/destinations/webhooks/{webhook_id}", WRITE, payload)

    # ---- policies -----------------------------------------------------------------------------

    async def policies(self) -> list[Policy]:
        """Every notification policy of the account."""
        body = await self._call("GET", "/policies", READ)
        return [Policy.from_api(item) for item in _items(body)]

    async def create_policy(self, policy: dict[str, Any]) -> str:
        """Create a policy (`name`, `alert_type`, `enabled`, `mechanisms`, ...); returns its id."""
        return _id(await self._call("POST", "/policies", WRITE, policy))

    async def update_policy(self, policy_id: str, policy: dict[str, Any]) -> None:
        """Replace a policy."""
        await self._call("PUT", f"/policies/{policy_id}", WRITE, policy)

    # ---- history and silences -----------------------------------------------------------------

    async def history(
        self, since: datetime, before: datetime | None = None, per_page: int = 100
    ) -> AsyncIterator[HistoryRecord]:
        """The Notification History from `since` (to `before`), page by page.

        Args:
            since: the oldest `sent` wanted (Cloudflare keeps 30 days, 90 on Enterprise).
            before: the newest, exclusive; None: up to now.
            per_page: 5 to 1000.
        """
        if not 5 <= per_page <= 1000:
            raise ValueError(f"per_page must be 5..1000, got {per_page}")
        page = 1
        while True:
            query = {"since": rfc3339(since), "page": str(page), "per_page": str(per_page)}
            if before is not None:
                query["before"] = rfc3339(before)
            body = await self._call("GET", "/history", READ, query=query)
            items = _items(body)
            for item in items:
                yield HistoryRecord.from_api(item)
            info = body.get("result_info")
            total = info.get("total_count") if isinstance(info, dict) else None
            if len(items) < per_page or (
                isinstance(total, int | float) and page * per_page >= total
            ):
                return
            page += 1

    async def silences(self) -> list[Silence]:
        """Every silence of the account."""
        body = await self._call("GET", "/silences", READ)
        return [Silence.from_api(item) for item in _items(body)]

    # ---- one call -----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        permission: str,
        payload: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call, retried on 429, 5xx and the network; the answer's envelope, or an error."""
        url = f"{self._base}/accounts/{self.account_id}/alerting/v3{path}"
        what = f"{method} {path.split('?')[0]}"
        for attempt in range(1, self._retry.attempts + 1):
            try:
                status, headers, body = await self._once(method, url, payload, query)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error: CloudflareError = Unreachable(f"{what}: {type(exc).__name__}")
                wait = None
            else:
                envelope = _envelope(body)
                if 200 <= status < 300 and envelope.get("success") is not False:
                    return envelope
                error = _error(what, status, envelope, permission)
                wait = retry_after(headers.get("Retry-After"), time.time())
            if not error.retriable or attempt == self._retry.attempts:
                raise error
            await self._sleep(self._retry.backoff(attempt, wait, self._jitter.random()))
        raise AssertionError("unreachable")  # pragma: no cover (the loop raises or returns)

    async def _once(
        self, method: str, url: str, payload: dict[str, Any] | None, query: dict[str, str] | None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {self._token()}"}
        data = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            data = jsonio.dumps(payload)
        timeout = aiohttp.ClientTimeout(total=self._retry.timeout)
        async with self._session.request(
            method, url, params=query, data=data, headers=headers, timeout=timeout
        ) as response:
            return response.status, dict(response.headers), await response.read()


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        parsed = jsonio.loads(body)
    except jsonio.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error(what: str, status: int, envelope: dict[str, Any], permission: str) -> ApiError:
    errors = envelope.get("errors")
    pairs = [
        (item.get("code"), item.get("message"))
        for item in (errors if isinstance(errors, list) else [])
        if isinstance(item, dict)
    ]
    codes = tuple(code for code, _ in pairs if isinstance(code, int))
    detail = "; ".join(f"{code} {message}" for code, message in pairs)[:500]
    # 10000 is Cloudflare's "Authentication error", also for a token lacking the permission.
    if status in (401, 403) or 10000 in codes:
        return PermissionDenied(what, status, codes, detail, permission)
    return ApiError(what, status, codes, detail)


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    result = body.get("result")
    return [item for item in result if isinstance(item, dict)] if isinstance(result, list) else []


def _id(body: dict[str, Any]) -> str:
    result = body.get("result")
    if isinstance(result, dict) and isinstance(result.get("id"), str):
        return str(result["id"])
    raise CloudflareError("Cloudflare's answer carried no id")
