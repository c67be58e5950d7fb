"""`connect` and `rotate`: a tenant's webhook destination, its policies and its secret, changed
in an order that never leaves Cloudflare holding a secret the ingest refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cfn.cloudflare.client import AlertingClient
from cfn.cloudflare.errors import ApiError, CloudflareError, PermissionDenied
from cfn.cloudflare.records import Policy, Webhook
from cfn.cloudflare.secretsfile import SecretsFile, new_secret


def destination_name(tenant: str) -> str:
    """The name of the tenant's webhook destination in its Cloudflare account: how cfn finds it
    again."""
    return f"cfn-{tenant}"


def policy_name(tenant: str, alert_type: str) -> str:
    return f"cfn-{tenant}-{alert_type}"


@dataclass(frozen=True)
class Timing:
    """How long connect and rotate wait, and on what.

    Attributes:
        settle: seconds between writing the secrets file and telling Cloudflare (every ingest
            must have reloaded it: its file watch looks every second; a Kubernetes Secret
            reaches pods within the kubelet's sync period, about a minute), and again before
            the old secret is retired (deliveries made with it finish).
        confirm_timeout: how long rotate waits for the destination's last_success to pass the
            update; after that, the test POST Cloudflare made with the new secret (the update
            succeeds only if it was answered 2xx) is the proof.
        write_attempts: tries of a destination write whose test POST failed (an ingest that has
            not reloaded yet answers it 401).
        sleep, clock: injected for tests.
    """

    settle: float = 3.0
    confirm_timeout: float = 60.0
    poll: float = 1.0
    write_attempts: int = 3
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.time


@dataclass
class Report:
    """What a command did, one line per object, for the operator."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False

    def add(self, line: str, changed: bool) -> None:
        self.lines.append(line)
        self.changed = self.changed or changed


async def find_destination(client: AlertingClient, tenant: str) -> Webhook | None:
    name = destination_name(tenant)
    return next((hook for hook in await client.webhooks() if hook.name == name), None)


async def connect(
    client: AlertingClient,
    secrets: SecretsFile,
    tenant: str,
    url: str,
    alert_types: list[str],
    timing: Timing = Timing(),
) -> Report:
    """Create the tenant's destination (or point it at `url` with a fresh secret), then one
    enabled policy per alert type sending to it. Run again, it changes nothing.

    Raises:
        CloudflareError: a call failed; the secrets file is as it was before.
        SecretsError: the secrets file is unusable.
    """
    report = Report()
    secrets.account(tenant)  # the tenant exists and names its account
    hook = await find_destination(client, tenant)
    if hook is not None and hook.url == url:
        report.add(f"destination {hook.name} ({hook.id}) -> {url}: unchanged", False)
        hook_id = hook.id
    else:
        hook_id = await _switch_secret(client, secrets, tenant, hook, url, timing, report)
    for alert_type in alert_types:
        await _ensure_policy(client, tenant, alert_type, hook_id, report)
    return report


async def rotate(
    client: AlertingClient,
    secrets: SecretsFile,
    tenant: str,
    timing: Timing = Timing(),
) -> Report:
    """Give the tenant's destination a fresh secret with no moment at which a delivery would be
    refused: the new secret is live beside the old before Cloudflare uses it, and the old is
    retired only once a delivery or the test POST used the new one.

    Raises:
        CloudflareError: no destination (run connect), or a call failed; on a failed update
            the secrets file is as it was before.
    """
    report = Report()
    secrets.account(tenant)
    hook = await find_destination(client, tenant)
    if hook is None or hook.url is None:
        raise CloudflareError(
            f"tenant {tenant!r} has no destination {destination_name(tenant)} in its Cloudflare "
            "account: run `cfn cloudflare connect` first"
        )
    await _switch_secret(client, secrets, tenant, hook, hook.url, timing, report)
    return report


async def _switch_secret(
    client: AlertingClient,
    secrets: SecretsFile,
    tenant: str,
    hook: Webhook | None,
    url: str,
    timing: Timing,
    report: Report,
) -> str:
    """Add a fresh secret, wait for the ingests, create or update the destination with it,
    confirm, retire the others. Returns the destination's id."""
    old = secrets.secrets(tenant)
    secret = new_secret()
    secrets.set_secrets(tenant, [*old, secret])  # 1: live beside the old one(s)
    report.add(f"secrets file: a new secret for tenant {tenant!r} beside {len(old)}", True)
    await timing.sleep(timing.settle)  # 2: every ingest reloads the file
    started = datetime.fromtimestamp(timing.clock(), UTC)
    name = destination_name(tenant)
    try:
        hook_id = await _write_destination(client, hook, name, url, secret, timing)
    except BaseException:
        secrets.set_secrets(tenant, old)  # Cloudflare still holds the old secret
        raise
    verb = "created" if hook is None else "updated"
    report.add(f"destination {name} ({hook_id}) -> {url}: {verb} with the new secret", True)
    if hook is not None:  # 4: a delivery since the update (or the test POST) used the new one
        report.add(await _confirm(client, hook_id, started, timing), False)
    if old and hook is not None:  # a new destination replaced no secret: the others stay
        await timing.sleep(timing.settle)  # deliveries made with the old secret finish
        secrets.set_secrets(tenant, [secret])  # 5: the old one(s) retired
        report.add(f"secrets file: {len(old)} old secret(s) of tenant {tenant!r} retired", True)
    return hook_id


async def _write_destination(
    client: AlertingClient,
    hook: Webhook | None,
    name: str,
    url: str,
    secret: str,
    timing: Timing,
) -> str:
    """Create or update; Cloudflare's test POST is retried while an ingest may not have the
    new secret yet."""
    for attempt in range(1, timing.write_attempts + 1):
        try:
            if hook is None:
                return await client.create_webhook(name, url, secret)
            await client.update_webhook(hook.id, name, url, secret)
            return hook.id
        except PermissionDenied:
            raise
        except ApiError as exc:
            if exc.retriable or attempt == timing.write_attempts:
                raise
            await timing.sleep(timing.settle)
    raise AssertionError("unreachable")  # pragma: no cover


async def _confirm(client: AlertingClient, hook_id: str, started: datetime, timing: Timing) -> str:
    deadline = timing.clock() + timing.confirm_timeout
    while True:
        hook = await client.webhook(hook_id)
        if hook.last_success is not None and hook.last_success >= started:
            return f"confirmed: Cloudflare delivered with the new secret at {hook.last_success}"
        if timing.clock() >= deadline:
            return (
                "confirmed by Cloudflare's test POST (the update succeeds only when it is "
                f"answered 2xx); no delivery within {timing.confirm_timeout:g}s"
            )
        await timing.sleep(timing.poll)


async def _ensure_policy(
    client: AlertingClient, tenant: str, alert_type: str, hook_id: str, report: Report
) -> None:
    name = policy_name(tenant, alert_type)
    found: Policy | None = next((p for p in await client.policies() if p.name == name), None)
    if found is not None and found.enabled and hook_id in found.webhook_ids:
        report.add(f"policy {name} ({found.id}): unchanged", False)
        return
    desired: dict[str, Any] = {
        "name": name,
        "alert_type": alert_type,
        "enabled": True,
        "description": f"cfn: {alert_type} to tenant {tenant}",
        "mechanisms": {"webhooks": [{"id": hook_id}]},
    }
    if found is None:
        policy_id = await client.create_policy(desired)
        report.add(f"policy {name} ({policy_id}): created", True)
        return
    # Keep what cfn does not manage: filters, other mechanisms (email, PagerDuty).
    kept = {k: v for k, v in found.raw.items() if k in ("filters", "alert_interval")}
    mechanisms = dict(found.raw.get("mechanisms") or {})
    mechanisms["webhooks"] = [{"id": hook_id}]
    await client.update_policy(found.id, {**desired, **kept, "mechanisms": mechanisms})
    report.add(f"policy {name} ({found.id}): updated", True)
