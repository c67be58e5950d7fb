"""cfn's HTTP/1.1 connection: httptools parsing, the ingest's limits, the app called directly.

uvicorn still runs the process (the listening socket, TLS, `--workers`, signals, the lifespan);
this class replaces its protocol and ASGI's per-request machinery. Measured here with the same
bare handler and the same Kafka send: uvicorn's httptools protocol and an ASGI app took about
65 us of CPU per webhook; this protocol, which calls the app with the whole request and writes
its answer when the app has one (no task, no ASGI message dicts), took about 19 us.

The app (`HttpApp`) sees each request twice:

* `check`, when its head is complete: the answer it gets from the head alone (a wrong secret,
  a declared body over the limit, a GET endpoint), or None to read the body;
* `handle`, with the whole body: it answers later through `Connection.answer`, at most once.

Limits, each answered in JSON and followed by closing the connection:

* a head over `max_header_bytes` -> 431. It is counted twice: the bytes received while a head is
  incomplete (a single endless header is refused before it is buffered), and the parsed request
  line and headers (a head that arrives whole in one read, in many small headers, is refused
  before the app sees it);
* the head not complete `header_timeout` seconds after its first byte (or after the connection
  opened) -> 408;
* the body of the request being served not complete `body_timeout` seconds after the read that
  ended its head (or after it started running, for one queued behind a pipelined request) -> 408,
  counted by the app. A request answered from its head is not timed: its answer is out, and the
  keep-alive timeout closes a connection that then stalls;
* bytes that are not HTTP -> 400.

Requests on one connection are answered in order (HTTP/1.1 pipelining); a refusal waits for the
answers owed to the complete requests before it. Reading pauses while `PIPELINE_DEPTH` requests
wait, and answers wait while the transport's buffer is full, so a client that pipelines without
reading cannot make the process buffer without end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

from cfn.schemas import jsonio

PIPELINE_DEPTH = 8  # requests read ahead on one connection before reading pauses
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# (status, header lines each ending in CRLF, without content-length; body)
Reply = tuple[int, bytes, bytes]

_PHRASES = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class Request:
    """One request as the connection reads it; the app reads `method`, `path` and `headers`
    (names lowercased) and may keep what it learned from the head in `tenant` and `started`."""

    __slots__ = (
        "answered",
        "chunks",
        "complete",
        "expect_continue",
        "handed",
        "head_done",
        "headers",
        "keep_alive",
        "method",
        "path",
        "size",
        "started",
        "tenant",
        "too_large",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.method = ""
        self.path = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.expect_continue = False
        self.head_done = False
        self.complete = False  # the whole body is read
        self.handed = False  # checked (and, if complete, given to the app)
        self.answered = False
        self.too_large = False
        self.tenant = ""
        self.started = 0.0


class Connection(Protocol):
    def answer(self, request: Request, reply: Reply) -> None: ...


class HttpApp(Protocol):
    max_body: int

    def check(self, request: Request) -> Reply | None: ...

    def handle(self, request: Request, body: bytes, connection: Connection) -> None: ...

    def too_large(self, request: Request) -> Reply: ...

    def body_timed_out(self, request: Request) -> Reply: ...


def error_reply(status: int, error: str, message: str) -> bytes:
    """A whole JSON error answer that closes the connection (the protocol's own refusals)."""
    body = jsonio.dumps({"error": error, "message": message})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _PHRASES[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_limits: tuple[int, float, float] | None = None


def _configured() -> tuple[int, float, float]:
    """(max header bytes, header timeout, body timeout) from CFN_* variables, once per process.

    From the environment rather than passed in: uvicorn pickles the protocol class to start
    `--workers` processes, and only a module-level class survives that.
    """
    global _limits
    if _limits is None:
        from cfn.ingest.settings import IngestSettings

        settings = IngestSettings.from_env()
        _limits = (settings.max_header_bytes, settings.header_timeout, settings.body_timeout)
    return _limits


def direct_app(app: Any) -> HttpApp:
    """The app under uvicorn's wrappers (middleware keep theirs in `.app`)."""
    seen = 0
    while not hasattr(app, "handle") and hasattr(app, "app") and seen < 8:
        app, seen = app.app, seen + 1
    if not hasattr(app, "handle") or not hasattr(app, "check"):
        raise TypeError(f"{type(app).__name__} has no check and handle: not an HttpApp")
    return app  # type: ignore[no-any-return]


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a refused connection."""


# uvicorn's date and server headers, joined once per second (they change once per second).
_defaults: list[Any] = [None, b""]


class IngestProtocol(asyncio.Protocol):
    """The protocol class for `uvicorn.run(http=...)`, built by uvicorn per connection."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: Any = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = _loop or asyncio.get_event_loop()
        self.app = direct_app(config.loaded_app)
        self.server_state = server_state
        self.keep_alive_timeout: float = config.timeout_keep_alive
        self.max_head, self.head_timeout, self.body_timeout = _configured()
        self.max_body = self.app.max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()  # in arrival order; queue[0] is being served
        self.reading: Request | None = None  # the request the parser is filling
        self.in_head = True
        self.head_bytes = 0  # received while the head is incomplete
        self.head_parsed = 0  # request line and headers, as parsed
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.refused = False  # a refusal is written or owed: read nothing more
        self.owed: bytes | None = None  # that refusal, until the earlier answers are out
        self.closing = False  # close after the answer being awaited (shutdown, upgrade)
        self.read_paused = False
        self.write_paused = False
        self.feeding = False  # inside feed_data: data_received arms the body timer after it

    # ---- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.transport = None
        self.queue.clear()
        for timer in (self.head_timer, self.body_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now, or after the answer the app owes."""
        queue = self.queue
        if queue and queue[0].handed and queue[0].complete and not queue[0].answered:
            self.closing = True
        elif self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._next()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.in_head:
            self.head_bytes += len(data)
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # no upgrades: answer what was read, then close
            self._pause_reading()
        except httptools.HttpParserError:
            if not self.refused:  # (a callback's _Refused arrives wrapped in one)
                self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")
        finally:
            self.feeding = False
        if self.refused:
            return
        reading = self.reading
        if self.in_head:
            if reading is not None:  # a head has begun
                if self.head_bytes > self.max_head:
                    self._too_large_head()
                elif self.head_timer is None:
                    self._arm_head()
        elif reading is not None and reading is self.queue[0]:
            if reading.answered:
                self._arm_idle()  # answered from its head: a stall closes at the keep-alive
            elif reading.handed and self.body_timer is None:
                self._arm_body()

    # ---- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        request = self.reading = Request()
        self.head_parsed = 0
        self.queue.append(request)
        if len(self.queue) >= PIPELINE_DEPTH:
            self._pause_reading()

    def on_url(self, url: bytes) -> None:
        self.head_parsed += len(url) + 16  # method, version and line ends
        self.reading.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_parsed += len(name) + len(value) + 4  # ": " and CRLF
        if self.head_parsed > self.max_head:
            self._too_large_head()
            raise _Refused
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.reading.expect_continue = True  # type: ignore[union-attr]
        self.reading.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        request = self.reading
        assert request is not None
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        parser = self.parser
        request.method = parser.get_method().decode("ascii", "replace")
        request.keep_alive = parser.should_keep_alive()
        request.head_done = True
        url = request.url
        if url[:1] != b"/":
            try:
                url = httptools.parse_url(url).path or b"/"
            except httptools.HttpParserInvalidURLError:
                self._refuse(400, "bad_request", "the request target is not a valid URL")
                raise _Refused from None
        raw, _, _ = url.partition(b"?")
        path = raw.decode("latin-1")
        request.path = unquote(path) if "%" in path else path
        self.server_state.total_requests += 1
        if request is self.queue[0] and not self.write_paused:
            self._start(request)

    def on_body(self, body: bytes) -> None:
        request = self.reading
        assert request is not None
        if request.answered or request.too_large:
            return  # answered from its head, or over the limit: the rest is dropped
        request.size += len(body)
        if request.size > self.max_body:
            request.too_large = True
            request.chunks = []
            if request.handed:
                self._reply(request, self.app.too_large(request))
            return
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self.reading
        assert request is not None
        self.reading = None
        request.complete = True
        self.in_head = True
        self.head_bytes = 0
        if request is not self.queue[0]:
            return  # its turn comes when the requests before it are answered
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if request.answered:
            self._done(request)
        elif request.handed:
            self._hand(request)

    # ---- serving ------------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        """`request` is now the one served and its head is read: check it, then hand it over
        once its body is complete."""
        request.handed = True
        reply = self.app.check(request)
        if reply is None and request.too_large:  # read ahead while queued, over the limit
            reply = self.app.too_large(request)
        if reply is not None:
            self._reply(request, reply)
        elif request.complete:
            self._hand(request)
        else:
            if request.expect_continue and self.transport is not None:
                self.transport.write(CONTINUE)
            if not self.feeding:  # (while feeding, only a read that ends mid-body arms it)
                self._arm_body()

    def _hand(self, request: Request) -> None:
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        self.app.handle(request, body, self)

    def answer(self, request: Request, reply: Reply) -> None:
        """The app's answer to a request it was handed (ignored once the connection is gone)."""
        if self.transport is not None:
            self._reply(request, reply)

    def _reply(self, request: Request, reply: Reply) -> None:
        transport = self.transport
        if request.answered or transport is None:
            return
        request.answered = True
        status, head, body = reply
        close = self.closing or not request.keep_alive
        defaults = self.server_state.default_headers
        if defaults is not _defaults[0]:
            _defaults[0] = defaults
            _defaults[1] = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        transport.write(
            b"HTTP/1.1 %d %s\r\n%s%scontent-length: %d\r\n%s\r\n%s"
            % (
                status,
                _PHRASES.get(status, b""),
                head,
                _defaults[1],
                len(body),
                b"connection: close\r\n" if close else b"",
                b"" if request.method == "HEAD" else body,
            )
        )
        if close:
            transport.close()
        elif request.complete:
            self._done(request)

    def _done(self, request: Request) -> None:
        """`request` is answered and wholly read: serve the next one."""
        queue = self.queue
        if queue and queue[0] is request:
            queue.popleft()
        if self.read_paused and len(queue) < PIPELINE_DEPTH and not self.closing:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self._next()

    def _next(self) -> None:
        transport = self.transport
        if transport is None or self.write_paused:
            return
        queue = self.queue
        if queue:
            request = queue[0]
            if request.head_done and not request.handed:
                self._start(request)
            return
        if self.owed is not None:
            transport.write(self.owed)
            transport.close()
        elif self.closing:
            transport.close()
        else:
            self._arm_idle()

    # ---- refusals -----------------------------------------------------------------------------

    def _refuse(self, status: int, error: str, message: str) -> None:
        """Answer `status` and close, after the answers owed to the complete requests before
        the refused one (which is the one being read, if any: it is dropped)."""
        if self.refused:
            return
        self.refused = True
        for timer in (self.head_timer, self.body_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = self.idle_timer = None
        reading = self.reading
        if reading is not None and self.queue and self.queue[-1] is reading:
            self.queue.pop()
            self.reading = None
        self._pause_reading()
        self.owed = error_reply(status, error, message)
        if not self.queue:  # else it goes out after the last of their answers (_next)
            self._next()

    def _too_large_head(self) -> None:
        self._refuse(
            431,
            "header_too_large",
            f"request head over {self.max_head} bytes (CFN_INGEST_MAX_HEADER_BYTES)",
        )

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    # ---- timers -------------------------------------------------------------------------------

    def _arm_head(self) -> None:
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _arm_body(self) -> None:
        self.body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _arm_idle(self) -> None:
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_later(self.keep_alive_timeout, self._idle)

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.in_head:
            self._refuse(
                408,
                "header_timeout",
                f"request head not complete within {self.head_timeout:g}s "
                "(CFN_INGEST_HEADER_TIMEOUT)",
            )

    def _body_timed_out(self) -> None:
        self.body_timer = None
        request = self.reading
        if request is None or not self.queue or self.queue[0] is not request:
            return
        if request.answered or not request.handed:
            return
        self.queue.popleft()
        self.reading = None
        self.refused = self.closing = True  # the rest of that body would read as a new request
        self._pause_reading()
        self._reply(request, self.app.body_timed_out(request))  # and closes

    def _idle(self) -> None:
        self.idle_timer = None
        if self.transport is not None:
            self.transport.close()
