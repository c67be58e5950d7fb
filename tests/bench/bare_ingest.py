"""The ingest baselines: a bare handler on the same HTTP stack as `cfn ingest` (uvicorn running
ingest/http.py's protocol, which calls the handler directly).

With BENCH_BARE_BOOTSTRAP set it does only what any durable webhook receiver must: read the
body, send it through the same sink cfn's ingest uses (cfn.ingest.sink.KafkaSink, its defaults:
librdkafka's idempotent acks=all lz4 producer, a 1 ms linger), wait for the ack, answer 202.
Without it, it reads the body and answers 202 (the HTTP stack's own ceiling). No auth, no
parsing, no key, no headers, no metrics.

Run: BENCH_BARE_PORT=8081 BENCH_BARE_BOOTSTRAP=127.0.0.1:9092 BENCH_BARE_TOPIC=t \
     python -m tests.bench.bare_ingest [--workers N]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cfn.ingest.http import Connection, Limits, Reply, Request
from cfn.ingest.settings import IngestSettings
from cfn.ingest.sink import KafkaSink, Outcome, SendResult

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"content-type: application/json\r\n"
ACCEPTED: Reply = (202, _JSON, b'{"status":"accepted"}')
UNAVAILABLE: Reply = (503, _JSON, b'{"status":"unavailable"}')


class BareIngest:
    """POST anything -> (optionally) Kafka -> 202; GET /readyz -> 200 once the producer runs."""

    max_body = 1024 * 1024

    def __init__(self, bootstrap: str | None, topic: str) -> None:
        self.limits = Limits.of(IngestSettings.from_env())  # as the ingest's own
        self.bootstrap = bootstrap
        self.topic = topic
        self.sink: KafkaSink | None = None
        self.ready = bootstrap is None

    def check(self, request: Request) -> Reply | None:
        if request.method == "POST":
            return None
        return (200 if self.ready else 503, _JSON, b'{"status":"ready"}')

    def handle(self, request: Request, body: bytes, connection: Connection) -> None:
        if self.sink is None:
            connection.answer(request, ACCEPTED)
            return

        def written(result: SendResult) -> None:
            connection.answer(request, ACCEPTED if result.outcome is Outcome.ACKED else UNAVAILABLE)

        self.sink.submit(self.topic, None, body, [], written)

    def too_large(self, request: Request) -> Reply:
        return (413, _JSON, b'{"status":"too_large"}')

    def body_timed_out(self, request: Request) -> Reply:
        return (408, _JSON, b'{"status":"timeout"}')

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.bootstrap is not None:
                    # cfn's sink with its defaults and the ingest's default ack timeout.
                    self.sink = KafkaSink(self.bootstrap, ack_timeout=3.0)
                    await self.sink.start()
                    self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.sink is not None:
                    await self.sink.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> BareIngest:
    """The uvicorn factory: each worker process reads the same environment."""
    return BareIngest(
        os.environ.get("BENCH_BARE_BOOTSTRAP") or None,
        os.environ.get("BENCH_BARE_TOPIC", "bench.bare"),
    )


def main() -> None:
    import uvicorn

    from cfn.ingest.http import IngestProtocol

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # Exactly the uvicorn options ingest.server.serve passes.
    uvicorn.run(
        "tests.bench.bare_ingest:create_app",
        factory=True,
        host="127.0.0.1",
        port=int(os.environ["BENCH_BARE_PORT"]),
        workers=args.workers,
        loop="uvloop",
        http=IngestProtocol,
        proxy_headers=False,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=15,
        limit_concurrency=None,
    )


if __name__ == "__main__":
    main()
