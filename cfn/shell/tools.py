"""Small operator tools: `cfn send` posts payload files, `cfn tail` follows a topic."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from cfn.config import topic_names
from cfn.kafka import aiokafka_options
from cfn.schemas import jsonio
from cfn.security import PLAINTEXT, KafkaSecurity


def payload_files(target: str) -> list[tuple[str, bytes]]:
    """(name, body) for a file, every *.json in a folder (sorted), or stdin ("-")."""
    if target == "-":
        return [("<stdin>", sys.stdin.buffer.read())]
    path = Path(target)
    if path.is_dir():
        return [(str(p), p.read_bytes()) for p in sorted(path.glob("*.json"))]
    return [(str(path), path.read_bytes())]


def send(target: str, url: str, secret: str | None, timeout: float = 10.0) -> int:
    """POST each payload; print one status line per file. Exit code 1 if any was not 2xx."""
    try:
        bodies = payload_files(target)
    except OSError as exc:
        print(f"cfn send: {exc}", file=sys.stderr)
        return 2
    if not bodies:
        print(f"cfn send: no *.json files in {target}", file=sys.stderr)
        return 2
    failed = 0
    for name, body in bodies:
        request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - operator-given URL
        request.add_header("content-type", "application/json")
        if secret:
            request.add_header("cf-webhook-auth", secret)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        except OSError as exc:
            print(f"{name}: cannot reach {url}: {exc}")
            failed += 1
            continue
        print(f"{name}: {status} {answer.decode(errors='replace')}")
        failed += not 200 <= status < 300
    return 1 if failed else 0


async def _tail(
    bootstrap: str,
    topic: str,
    from_beginning: bool,
    limit: int | None,
    idle: float | None,
    security: KafkaSecurity,
) -> int:
    consumer = AIOKafkaConsumer(
        topic,
        **aiokafka_options(bootstrap, security),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # only what cfn committed, never aborted writes
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    shown = 0
    loop = asyncio.get_running_loop()
    last = loop.time()
    try:
        while limit is None or shown < limit:
            batch = await consumer.getmany(timeout_ms=500)
            records = [r for items in batch.values() for r in items]
            if records:
                last = loop.time()
            elif idle is not None and loop.time() - last > idle:
                break
            for record in records:
                head = f"--- {record.topic}[{record.partition}]@{record.offset}"
                if record.value is None:  # a table topic's tombstone
                    print(f"{head} key={record.key!r}: deleted (tombstone)", flush=True)
                    shown += 1
                    continue
                try:
                    text = json.dumps(jsonio.loads(record.value), indent=2, sort_keys=True)
                except ValueError:
                    text = repr(record.value)
                print(f"{head}\n{text}", flush=True)
                shown += 1
                if limit is not None and shown >= limit:
                    break
    finally:
        await consumer.stop()
    return 0


def tail(
    role: str,
    bootstrap: str,
    prefix: str,
    from_beginning: bool = False,
    limit: int | None = None,
    idle: float | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> int:
    """Pretty-print records of one of cfn's output topics as they arrive (Ctrl-C stops)."""
    try:
        return asyncio.run(
            _tail(bootstrap, topic_names(prefix)[role], from_beginning, limit, idle, security)
        )
    except KeyboardInterrupt:
        return 0
