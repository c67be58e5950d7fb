"""The `cfn` command line: one entry point, each subcommand imported only when used."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _broker(args: argparse.Namespace) -> int:
    from processors.broker import run_broker

    return run_broker(Path(args.data_dir), args.port, args.nodes)


def _fetch_kafka(_args: argparse.Namespace) -> int:
    from processors.broker import BrokerError, ensure_jars

    try:
        print(f"Kafka jars ready in {ensure_jars()}")
    except BrokerError as exc:
        print(f"cfn fetch-kafka: {exc}", file=sys.stderr)
        return 2
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from ingest.server import serve

    return serve(workers=args.workers, allow_unauthenticated=args.allow_unauthenticated)


def _worker(_args: argparse.Namespace) -> int:
    from processors.worker import run

    return run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfn", description="Cloudflare Notifications webhooks into Kafka."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", help="run a local Apache Kafka (KRaft) in the foreground")
    broker.add_argument("--port", type=int, default=9092, help="first broker port (default 9092)")
    broker.add_argument("--data-dir", default=".local/kafka", help="storage and logs")
    broker.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="1 or 3 nodes")
    broker.set_defaults(func=_broker)

    ingest = sub.add_parser("ingest", help="serve the Cloudflare webhook endpoint")
    ingest.add_argument("--workers", type=int, default=1, help="processes on one port")
    ingest.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept webhooks without a secret (prints a warning)",
    )
    ingest.set_defaults(func=_ingest)

    worker = sub.add_parser("worker", help="run the stream processor (Faust worker)")
    worker.set_defaults(func=_worker)

    fetch = sub.add_parser("fetch-kafka", help="download the Kafka broker jars into the cache")
    fetch.set_defaults(func=_fetch_kafka)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    sys.exit(func(args))
