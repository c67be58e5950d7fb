"""The `cfn` command line: one entry point, each subcommand imported only when used."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cfn.config import OUTPUT_ROLES, CommandSettings, ConfigError
from cfn.logs import LogSettings, configure


def _broker(args: argparse.Namespace) -> int:
    from cfn.shell.broker import run_broker

    # A secure cluster keeps its own folder: a plaintext one's storage cannot be reused.
    data_dir = args.data_dir or (".local/kafka-secure" if args.secure else ".local/kafka")
    return run_broker(
        Path(data_dir), args.port, args.nodes, secure=args.secure, ssl_port=args.ssl_port
    )


def _acls(args: argparse.Namespace) -> int:
    from cfn.shell.acls import render_role

    try:
        print(
            render_role(
                args.role,
                args.principal,
                prefix=args.prefix,
                app_id=args.app_id,
                bootstrap=args.bootstrap,
                command_config=args.command_config,
                transactions=CommandSettings.from_env().transactions,
                upgrading=args.upgrading,
            )
        )
    except ValueError as exc:
        print(f"cfn acls: {exc}", file=sys.stderr)
        return 2
    return 0


def _fetch_kafka(_args: argparse.Namespace) -> int:
    from cfn.shell.broker import BrokerError, ensure_jars

    try:
        print(f"Kafka jars ready in {ensure_jars()}")
    except BrokerError as exc:
        print(f"cfn fetch-kafka: {exc}", file=sys.stderr)
        return 2
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from cfn.ingest.server import serve

    return serve(workers=args.workers, allow_unauthenticated=args.allow_unauthenticated)


def _worker(_args: argparse.Namespace) -> int:
    from cfn.processors.worker import run

    return run()


def _run(args: argparse.Namespace) -> int:
    from cfn.shell.runner import run_all

    return run_all(args.kafka_port)


def _replay(args: argparse.Namespace) -> int:
    from cfn.processors.replay import run_replay

    return run_replay(args.start, args.stop, args.output_prefix, live=args.live, yes=args.yes)


def _send(args: argparse.Namespace) -> int:
    from cfn.shell.tools import send

    secret = args.secret or CommandSettings.from_env().ingest_secret
    local = Path(".local/secret")
    if secret is None and local.exists():
        secret = local.read_text().strip()
    return send(args.target, args.url, secret)


def _tail(args: argparse.Namespace) -> int:
    from cfn.security import KafkaSecurity
    from cfn.shell.tools import tail

    try:
        security = KafkaSecurity.from_env()
    except ConfigError as exc:
        print(f"cfn tail: {exc}", file=sys.stderr)
        return 2
    settings = CommandSettings.from_env()
    return tail(
        args.topic,
        args.bootstrap or settings.bootstrap,
        args.prefix or settings.topic_prefix,
        from_beginning=args.from_beginning,
        limit=args.max,
        idle=args.idle,
        security=security,
    )


def _cloudflare(args: argparse.Namespace) -> int:
    from cfn.cloudflare.commands import run as run_cloudflare

    return run_cloudflare(args)


def _catalog(args: argparse.Namespace) -> int:
    from cfn.schemas.catalog import describe, describe_all, lookup

    if args.alert_type is None:
        print(describe_all())
        return 0
    print(describe(args.alert_type))
    return 0 if lookup(args.alert_type) is not None else 1


class _Version(argparse.Action):
    """`--version`: prints `cfn <version>` and exits. The version is looked up only when asked:
    importlib.metadata and prometheus_client would add tens of ms to every `cfn` start."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from cfn.version import version

        print(f"cfn {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfn", description="Cloudflare Notifications webhooks into Kafka."
    )
    parser.add_argument("--version", action=_Version, help="print cfn's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    settings = CommandSettings.from_env()

    broker = sub.add_parser("broker", help="run a local Apache Kafka (KRaft) in the foreground")
    broker.add_argument("--port", type=int, default=9092, help="first broker port (default 9092)")
    broker.add_argument(
        "--data-dir", help="storage and logs (default .local/kafka, or .local/kafka-secure)"
    )
    broker.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="1 or 3 nodes")
    broker.add_argument(
        "--secure",
        action="store_true",
        help="SASL_SSL (SCRAM-SHA-512) and mTLS listeners, a local CA, ACLs enforced",
    )
    broker.add_argument(
        "--ssl-port", type=int, help="with --secure: first mTLS port (default port + 20000)"
    )
    broker.set_defaults(func=_broker)

    acls = sub.add_parser("acls", help="print the kafka-acls commands of a role's least privilege")
    acls.add_argument("--principal", required=True, help="User:NAME (SASL user or cert CN)")
    acls.add_argument(
        "--role", required=True, choices=("ingest", "worker", "reconcile", "provisioner")
    )
    acls.add_argument(
        "--prefix",
        default=settings.topic_prefix,
        help="topic prefix (default: CFN_TOPIC_PREFIX, else cfn.)",
    )
    acls.add_argument(
        "--app-id",
        default=settings.app_id,
        help="the worker's app id (default: CFN_APP_ID, else cfn)",
    )
    acls.add_argument(
        "--bootstrap",
        default=settings.bootstrap,
        help="for --bootstrap-server (default: CFN_KAFKA_BOOTSTRAP)",
    )
    acls.add_argument(
        "--command-config",
        default="admin.properties",
        help="the admin's client properties file, for --command-config",
    )
    acls.add_argument(
        "--upgrading",
        action="store_true",
        help="worker: also READ the per-table changelogs of earlier versions, to migrate them",
    )
    acls.set_defaults(func=_acls)

    ingest = sub.add_parser("ingest", help="serve the Cloudflare webhook endpoint")
    ingest.add_argument("--workers", type=int, default=1, help="processes on one port")
    ingest.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept webhooks without a secret (prints a warning)",
    )
    ingest.set_defaults(func=_ingest)

    worker = sub.add_parser("worker", help="run the stream processor (the worker engine)")
    worker.set_defaults(func=_worker)

    run = sub.add_parser("run", help="start a local broker, the ingest and the worker (make run)")
    run.add_argument("--kafka-port", type=int, default=9092)
    run.set_defaults(func=_run)

    replay = sub.add_parser("replay", help="reprocess a range of cfn.raw deterministically")
    replay.add_argument(
        "--from",
        dest="start",
        required=True,
        help="ISO time (2026-11-22T10:00:00Z) or partition:offset",
    )
    replay.add_argument("--to", dest="stop", help="ISO time or partition:offset (exclusive)")
    replay.add_argument(
        "--output-prefix",
        help="write to <prefix>events... (default: replay.<CFN_TOPIC_PREFIX>, a shadow copy)",
    )
    replay.add_argument(
        "--live",
        action="store_true",
        help="write into the live topics (CFN_TOPIC_PREFIX); prints the plan and asks first",
    )
    replay.add_argument(
        "--yes", action="store_true", help="with --live: do not ask (needed without a terminal)"
    )
    replay.set_defaults(func=_replay)

    send_cmd = sub.add_parser("send", help="POST payload files to an ingest")
    send_cmd.add_argument("target", help="a .json file, a folder of them, or - for stdin")
    send_cmd.add_argument("--url", default="http://127.0.0.1:8080/webhooks/cloudflare")
    send_cmd.add_argument("--secret", help="default: CFN_INGEST_SECRET, then .local/secret")
    send_cmd.set_defaults(func=_send)

    tail_cmd = sub.add_parser("tail", help="pretty-print a cfn topic as it flows")
    tail_cmd.add_argument("topic", choices=OUTPUT_ROLES)
    tail_cmd.add_argument("--from-beginning", action="store_true")
    tail_cmd.add_argument("--max", type=int, help="stop after this many records")
    tail_cmd.add_argument("--idle", type=float, help="stop after this many quiet seconds")
    tail_cmd.add_argument("--bootstrap", help="default: CFN_KAFKA_BOOTSTRAP")
    tail_cmd.add_argument("--prefix", help="default: CFN_TOPIC_PREFIX")
    tail_cmd.set_defaults(func=_tail)

    _cloudflare_parsers(sub)

    catalog = sub.add_parser("catalog", help="what an alert type is and what to do about it")
    catalog.add_argument("alert_type", nargs="?")
    catalog.set_defaults(func=_catalog)

    fetch = sub.add_parser("fetch-kafka", help="download the Kafka broker jars into the cache")
    fetch.set_defaults(func=_fetch_kafka)
    return parser


def _cloudflare_parsers(sub: Any) -> None:
    """`cfn cloudflare connect|rotate|status|reconcile` and `cfn reconcile` (cfn.cloudflare)."""
    from cfn.cloudflare.commands import add_common_arguments, add_reconcile_arguments

    cloudflare = sub.add_parser(
        "cloudflare", help="connect tenants' Cloudflare accounts, rotate secrets, delivery health"
    )
    actions = cloudflare.add_subparsers(dest="action", required=True, metavar="ACTION")
    connect = actions.add_parser(
        "connect", help="create or update the tenant's webhook destination and policies"
    )
    connect.add_argument("--tenant", required=True)
    connect.add_argument("--url", required=True, help="the ingest's public webhook URL")
    connect.add_argument("--alert-types", help="comma-separated: one policy per alert type")
    rotate = actions.add_parser("rotate", help="give the tenant's destination a fresh secret")
    rotate.add_argument("--tenant", required=True)
    for parser in (connect, rotate):
        parser.add_argument(
            "--settle",
            default="3s",
            help="wait after writing the secrets file, for every ingest to reload (default 3s)",
        )
        parser.add_argument(
            "--confirm-timeout",
            default="60s",
            help="rotate: wait this long for a delivery with the new secret (default 60s)",
        )
    status = actions.add_parser("status", help="each tenant's destination: last success, failure")
    status.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    reconcile = actions.add_parser("reconcile", help="the same as `cfn reconcile`")
    add_reconcile_arguments(reconcile)
    for parser in (connect, rotate, status, reconcile):
        add_common_arguments(parser)
        parser.set_defaults(func=_cloudflare)
    top = sub.add_parser(
        "reconcile", help="Cloudflare's Notification History against cfn.raw: report, --backfill"
    )
    add_reconcile_arguments(top)
    add_common_arguments(top)
    top.set_defaults(func=_cloudflare)


# Commands that set up their own logging: the ingest configures it in its server module (for
# the processes of --workers too).
OWN_LOGGING = frozenset({"ingest"})


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in OWN_LOGGING:
        try:
            configure(LogSettings.from_env())
        except ConfigError as exc:
            print(f"cfn {args.command}: {exc}", file=sys.stderr)
            sys.exit(2)
    func: Callable[[argparse.Namespace], int] = args.func
    sys.exit(func(args))
