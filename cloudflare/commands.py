"""`cfn cloudflare connect|rotate|status|reconcile` and `cfn reconcile`: the command line's side,
from parsed arguments to an exit code (cfn.shell.cli only parses)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, start_http_server

from cfn.access import denial
from cfn.cloudflare.client import AlertingClient
from cfn.cloudflare.connect import Report, Timing, connect, find_destination, rotate
from cfn.cloudflare.errors import CloudflareError
from cfn.cloudflare.metrics import ReconcileMetrics
from cfn.cloudflare.reconcile import Window, run_every, run_pass
from cfn.cloudflare.secretsfile import SecretsFile
from cfn.cloudflare.settings import CloudflareSettings
from cfn.config import ConfigError, parse_duration
from cfn.ingest.auth import SecretsError


def add_reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    parser.add_argument(
        "--since",
        default="24h",
        help="how far back: a duration (24h, 7d) or an RFC 3339 time (default 24h)",
    )
    parser.add_argument(
        "--backfill", action="store_true", help="write what was missed into cfn.raw"
    )
    parser.add_argument("--every", help="repeat every DURATION (5m) and serve /metrics")
    parser.add_argument(
        "--grace",
        default="30m",
        help="records sent less than this ago are pending, not missed (default 30m)",
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secrets-file", type=Path, help="the ingest's secrets file (CFN_INGEST_SECRETS_FILE)"
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed `cfn cloudflare ...` or `cfn reconcile` command."""
    name = "cfn reconcile" if args.command == "reconcile" else f"cfn cloudflare {args.action}"
    try:
        settings = CloudflareSettings.from_env()
        if getattr(args, "secrets_file", None) is not None:
            settings = _with_file(settings, args.secrets_file)
        action = "reconcile" if args.command == "reconcile" else args.action
        return asyncio.run(_ACTIONS[action](settings, args))
    except (ConfigError, SecretsError, CloudflareError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError | SecretsError | ValueError) else 1
    except KafkaError as exc:
        # A missing ACL is the operator's to grant: named once, without a traceback.
        refused = denial(exc, "reconcile")
        if refused is None:
            raise
        print(f"{name}: {refused}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _with_file(settings: CloudflareSettings, path: Path) -> CloudflareSettings:
    from dataclasses import replace

    return replace(settings, secrets_file=path)


def _timing(args: argparse.Namespace) -> Timing:
    return Timing(
        settle=parse_duration(args.settle), confirm_timeout=parse_duration(args.confirm_timeout)
    )


async def _with_client(
    settings: CloudflareSettings,
    tenant: str,
    work: Callable[[AlertingClient, SecretsFile], Awaitable[Report]],
) -> int:
    secrets = SecretsFile(settings.require_secrets_file())
    account = secrets.account(tenant)
    async with aiohttp.ClientSession() as session:
        client = AlertingClient(session, settings.api_base, account.account_id, account.token)
        report = await work(client, secrets)
    for line in report.lines:
        print(line)
    print("changed" if report.changed else "nothing to change")
    return 0


async def _connect(settings: CloudflareSettings, args: argparse.Namespace) -> int:
    types = [t.strip() for t in (args.alert_types or "").split(",") if t.strip()]
    return await _with_client(
        settings,
        args.tenant,
        lambda client, secrets: connect(
            client, secrets, args.tenant, args.url, types, _timing(args)
        ),
    )


async def _rotate(settings: CloudflareSettings, args: argparse.Namespace) -> int:
    return await _with_client(
        settings,
        args.tenant,
        lambda client, secrets: rotate(client, secrets, args.tenant, _timing(args)),
    )


async def _status(settings: CloudflareSettings, args: argparse.Namespace) -> int:
    """One line per tenant: its destination and Cloudflare's last success and failure."""
    index = SecretsFile(settings.require_secrets_file()).index()
    tenants = args.tenant or sorted(index.cloudflare)
    failing = 0
    async with aiohttp.ClientSession() as session:
        for tenant in tenants:
            account = index.cloudflare.get(tenant)
            if account is None:
                print(f"{tenant}: no Cloudflare account in the secrets file")
                failing += 1
                continue
            client = AlertingClient(session, settings.api_base, account.account_id, account.token)
            try:
                hook = await find_destination(client, tenant)
            except CloudflareError as exc:
                print(f"{tenant}: {exc}")
                failing += 1
                continue
            if hook is None:
                print(f"{tenant}: no cfn destination (run `cfn cloudflare connect`)")
                failing += 1
                continue
            ok, last_success, last_failure = hook.last_success, hook.last_success, hook.last_failure
            verdict = "ok"
            if last_failure is not None and (ok is None or last_failure > ok):
                verdict = "FAILING"
                failing += 1
            elif last_success is None:
                verdict = "no delivery yet"
            print(
                f"{tenant}: {verdict}; destination {hook.id} -> {hook.url}; last_success "
                f"{_when(last_success)}; last_failure {_when(last_failure)}"
            )
    return 1 if failing else 0


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def since_time(text: str, now: datetime) -> datetime:
    """`--since`: a duration back from now, or an RFC 3339 time with a zone."""
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: not a duration (24h) nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"--since {text!r} has no time zone; add Z or +00:00")
    return moment


async def _reconcile(settings: CloudflareSettings, args: argparse.Namespace) -> int:
    window = Window(
        since=since_time(args.since, datetime.now(UTC)),
        grace=timedelta(seconds=parse_duration(args.grace)),
        window=timedelta(seconds=parse_duration(args.grace)),
    )
    registry = CollectorRegistry()
    metrics = ReconcileMetrics.create(registry)
    if args.every:
        every = parse_duration(args.every)
        start_http_server(settings.metrics_port, settings.metrics_host, registry)
        print(f"reconciling every {args.every}; metrics on :{settings.metrics_port}/metrics")
        await run_every(
            settings,
            window,
            every,
            tenants=args.tenant,
            backfill=args.backfill,
            metrics=metrics,
            print_line=lambda line: print(line, flush=True),
        )
        return 0
    results = await run_pass(
        settings, window, tenants=args.tenant, backfill=args.backfill, metrics=metrics
    )
    for result in results:
        for line in result.lines():
            print(line)
    errors = any(r.error for r in results)
    return 1 if errors else 0


_ACTIONS: dict[
    str, Callable[[CloudflareSettings, argparse.Namespace], Coroutine[Any, Any, int]]
] = {
    "connect": _connect,
    "rotate": _rotate,
    "status": _status,
    "reconcile": _reconcile,
}
