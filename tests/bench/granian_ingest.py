"""The ingest on granian (RSGI: Rust, hyper) instead of cfn's own HTTP/1.1 protocol.

`GranianIngest` serves cfn's own `IngestApp`, built exactly as `cfn ingest` builds it
(ingest.server.create_app: the same settings, secrets and KafkaSink, acks=all), through the two
calls cfn's protocol makes: `check` with the head, `handle` with the body, the answer once Kafka
has acknowledged. So the webhook does the same work as on `cfn ingest` (authentication, JSON
parse, key, headers, admission, metrics, 202 after the ack) and only the HTTP server differs.
Its ASGI lifespan (the producer, the probes) runs in the worker's `__rsgi_init__`.

`KafkaRsgi` is the slim webhook beside tests/bench/bare_ingest.py's bare+Kafka: it checks
`cf-webhook-auth` (cfn's SecretIndex), reads the body, writes it unkeyed with cfn's KafkaSink at
its defaults (acks=all, idempotent, lz4, 1 ms linger) and answers 202 after the ack. `BareRsgi`
is granian's own ceiling beside bare_ingest's bare HTTP: it reads the body of any POST and
answers 202; no Kafka.

Run (one worker process, as `cfn ingest` without --workers):
    CFN_KAFKA_BOOTSTRAP=127.0.0.1:9092 CFN_INGEST_SECRET=... \
    python -m granian --interface rsgi --factory --port 8081 \
        tests.bench.granian_ingest:create_app
BENCH_GRANIAN_MODE=kafka (with BENCH_GRANIAN_TOPIC) or =bare serves the slim apps instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Any, Protocol

from cfn.ingest.app import FutureConnection, IngestApp, Message, Receive, Scope, Send
from cfn.ingest.auth import SecretIndex
from cfn.ingest.http import Reply, Request, head_fields
from cfn.ingest.sink import KafkaSink, Outcome, SendResult

GRANIAN_VERSION = "2.8.7"  # pyproject's bench extra pins it

_HeaderList = list[tuple[str, str]]
_JSON: _HeaderList = [("content-type", "application/json")]


class _Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


class _Scope(Protocol):
    """What the apps read of an RSGI scope (granian.rsgi.Scope)."""

    proto: str
    method: str
    path: str

    @property
    def headers(self) -> _Headers: ...


class _HTTP(Protocol):
    """What the apps use of an RSGI HTTP protocol (granian.rsgi.HTTPProtocol)."""

    def __call__(self) -> Awaitable[bytes]: ...

    def response_bytes(self, status: int, headers: _HeaderList, body: bytes) -> None: ...


def _head_list(head: bytes) -> _HeaderList:
    """A reply's head lines (b"name: value\\r\\n"...) as RSGI's (name, value) pairs."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head_fields(head)]


class GranianIngest:
    """cfn's `IngestApp` as an RSGI application: what adopting granian would serve.

    Only the webhook's head fields the app reads are handed over (`cf-webhook-auth` and
    `content-length`); a body over CFN_INGEST_MAX_BODY is read whole before its 413, where cfn's
    protocol stops reading at the limit.
    """

    def __init__(self, app: IngestApp) -> None:
        self.app = app
        self._heads: dict[bytes, _HeaderList] = {}  # replies share a handful of heads
        self._stopping: asyncio.Event | None = None
        self._lifespan: asyncio.Task[None] | None = None

    async def __rsgi__(self, scope: _Scope, proto: _HTTP) -> None:
        if scope.proto != "http":
            return
        app = self.app
        request = Request()
        request.method = scope.method
        request.path = scope.path
        get = scope.headers.get
        for name in ("cf-webhook-auth", "content-length"):
            value = get(name)
            if value is not None:
                request.headers.append((name.encode(), value.encode("latin-1")))
        # The bench waits on /readyz at the served port (cfn serves it on its admin port).
        reply = app._readyz() if request.path == "/readyz" else app.check(request)
        if reply is None:
            try:
                body = await proto()
            except BaseException:
                app.abandon(request)  # the slot `check` took
                raise
            if len(body) > app.max_body:
                reply = app.too_large(request)
            else:
                answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
                app.handle(request, body, FutureConnection(answered))
                reply = await answered
        status, head, payload = reply
        headers = self._heads.get(head)
        if headers is None:
            headers = self._heads[head] = _head_list(head)
        proto.response_bytes(status, headers, payload)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the app's ASGI lifespan on the worker's loop (before it serves)."""
        self._stopping = asyncio.Event()
        started = loop.create_future()
        self._lifespan = loop.create_task(self.app(*self._lifespan_channel(started)))
        loop.run_until_complete(started)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """End the lifespan: the app stops its probes and its producer (which flushes)."""
        if self._stopping is not None and self._lifespan is not None:
            self._stopping.set()
            loop.run_until_complete(self._lifespan)

    def _lifespan_channel(self, started: asyncio.Future[None]) -> tuple[Scope, Receive, Send]:
        stopping = self._stopping
        assert stopping is not None
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> Message:
            message = next(messages, None)
            if message is not None:
                return message
            await stopping.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and not started.done():
                started.set_result(None)

        return {"type": "lifespan"}, receive, send


class KafkaRsgi:
    """POST with a known `cf-webhook-auth` -> Kafka (acks=all) -> 202; GET -> /readyz."""

    def __init__(self, bootstrap: str, topic: str, secret: str) -> None:
        self.sink = KafkaSink(bootstrap, ack_timeout=3.0)  # the ingest's default ack timeout
        self.topic = topic
        self.secrets = SecretIndex.load(secret, None)

    async def __rsgi__(self, scope: _Scope, proto: _HTTP) -> None:
        if scope.proto != "http":
            return
        if scope.method != "POST":
            proto.response_bytes(200, _JSON, b'{"status":"ready"}')
            return
        presented = scope.headers.get("cf-webhook-auth")
        if presented is None or self.secrets.tenant_for(presented.encode("latin-1")) is None:
            proto.response_bytes(401, _JSON, b'{"status":"unauthorized"}')
            return
        body = await proto()
        written: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self.sink.submit(self.topic, None, body, [], written.set_result)
        if (await written).outcome is Outcome.ACKED:
            proto.response_bytes(202, _JSON, b'{"status":"accepted"}')
        else:
            proto.response_bytes(503, _JSON, b'{"status":"unavailable"}')

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.sink.start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.sink.stop())


class BareRsgi:
    """POST anything -> read the body -> 202; GET -> 200 (its /readyz). No Kafka."""

    async def __rsgi__(self, scope: _Scope, proto: _HTTP) -> None:
        if scope.proto != "http":
            return
        if scope.method == "POST":
            await proto()
            proto.response_bytes(202, _JSON, b'{"status":"accepted"}')
        else:
            proto.response_bytes(200, _JSON, b'{"status":"ready"}')


def create_app() -> GranianIngest | KafkaRsgi | BareRsgi:
    """The granian factory (`--factory`): each worker process reads the same environment."""
    mode = os.environ.get("BENCH_GRANIAN_MODE", "cfn")
    if mode == "bare":
        return BareRsgi()
    if mode == "kafka":
        return KafkaRsgi(
            os.environ["CFN_KAFKA_BOOTSTRAP"],
            os.environ["BENCH_GRANIAN_TOPIC"],
            os.environ["CFN_INGEST_SECRET"],
        )
    from cfn.ingest.server import create_app as create_ingest

    return GranianIngest(create_ingest())


def argv(port: int, workers: int) -> list[str]:
    """granian's command line for `create_app`: the options `cfn ingest` passes uvicorn where
    granian has them (one event loop per process on uvloop, HTTP/1.1, no access log)."""
    return [
        "-m",
        "granian",
        "--interface",
        "rsgi",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "1",
        "--no-ws",
        "--log-level",
        "warning",
        "--no-access-log",
        "tests.bench.granian_ingest:create_app",
    ]
