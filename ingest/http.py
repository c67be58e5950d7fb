"""cfn's HTTP/1.1 connection: httptools (llhttp) parsing, the ingest's limits, the app called
directly.

uvicorn runs the process; this protocol replaces its own and ASGI's per-request machinery. The
app (`HttpApp`) sees each request twice: `check` with its head (an answer from the head alone,
or None to read the body), then `handle` with the whole body, answering later through
`Connection.answer`. Every state of a connection has a deadline, framing follows RFC 9112, and
pipelined requests are answered in order (docs/design.md, "What is the protocol's own").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import unquote

import httptools

from cfn.schemas import jsonio

if TYPE_CHECKING:
    from cfn.ingest.settings import IngestSettings

log = logging.getLogger("cfn.ingest")

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
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
    503: b"Service Unavailable",
}


class Request:
    """One request as the connection reads it; the app reads `method`, `path` and `headers`
    (names lowercased) and may keep what it learned from the head in `tenant` and `started`."""

    __slots__ = (
        "answered",
        "chunks",
        "complete",
        "delay",
        "discard",
        "expect_continue",
        "handed",
        "has_body",
        "head_done",
        "headers",
        "held",
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
        self.has_body = False  # the head declares a body (a length above 0, or chunked)
        self.head_done = False
        self.complete = False  # the whole body is read
        self.handed = False  # checked (and, if complete, given to the app)
        self.answered = False
        self.too_large = False
        self.tenant = ""
        self.started = 0.0
        self.held: Any = None  # what the app holds for it from `check` on (an admission slot)
        self.delay = 0.0  # seconds `check`'s answer is held before it goes out
        self.discard = False  # the body is not wanted: its bytes are dropped as they arrive


class Connection(Protocol):
    def answer(self, request: Request, reply: Reply) -> None: ...


class HttpApp(Protocol):
    max_body: int
    limits: Limits

    def check(self, request: Request) -> Reply | None: ...

    def handle(self, request: Request, body: bytes, connection: Connection) -> None: ...

    def too_large(self, request: Request) -> Reply: ...

    def abandon(self, request: Request) -> None: ...

    def failed(self, request: Request, exc: Exception) -> Reply: ...

    def connection_refused(self) -> None: ...

    def body_timed_out(self, request: Request) -> Reply: ...


def head_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """A reply's head lines (b"name: value\\r\\n"...) as (name, value) pairs."""
    fields = []
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name:
            fields.append((name, value))
    return fields


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


class Limits(NamedTuple):
    """The connection limits (CFN_INGEST_*, ingest.settings), which the app carries: uvicorn
    builds the protocol with only its own config and the app."""

    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    write_timeout: float
    max_connections: int
    shutdown_timeout: float

    @classmethod
    def of(cls, settings: IngestSettings) -> Limits:
        return cls(
            settings.max_header_bytes,
            settings.header_timeout,
            settings.body_timeout,
            settings.write_timeout,
            settings.max_connections,
            settings.shutdown_timeout,
        )


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


def framing_error(version: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    """(status, message) when a request head's framing is faulty by RFC 9112 (section 6.1 and
    6.3), else None. `headers` have lowercase names."""
    if version not in ("1.0", "1.1"):
        return 505, f"HTTP/{version} is not supported: use HTTP/1.1"
    codings: list[bytes] = []
    has_length = False
    for name, value in headers:
        if name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"content-length":
            has_length = True
    if not codings:
        return None
    if version != "1.1":
        return 400, "Transfer-Encoding in an HTTP/1.0 request"
    if has_length:
        return 400, "both Transfer-Encoding and Content-Length"
    if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        return 400, "Transfer-Encoding must end with chunked, applied once"
    if len(codings) > 1:
        return 501, "no transfer coding other than chunked is implemented"
    return None


_FRAMING_ERRORS = {400: "bad_framing", 501: "not_implemented", 505: "version_not_supported"}


# uvicorn's date and server headers, joined once per second (they change once per second).
_defaults: list[Any] = [None, b""]

LINGER = 2.0  # seconds a connection closing with body bytes owed waits for its answer to go out


class IngestProtocol(asyncio.Protocol):
    """The protocol class for `uvicorn.run(http=...)`, built by uvicorn per connection.

    The deadlines: a head within `header_timeout` of its first byte (or of the connection) and a
    body within `body_timeout` in total, else 408; idle between requests, the keep-alive timeout
    (stray CRLFs do not reset it); a connection answered with body bytes owed closes within
    `LINGER`; a client that reads nothing for `write_timeout` is cut off; at shutdown, answered
    connections close at once and the rest after `shutdown_timeout`. Refusals (431 for a head
    over `max_header_bytes`, 400/501/505 for bad framing, 503 over `max_connections`) are a JSON
    answer and the connection closed; reading pauses while `PIPELINE_DEPTH` requests wait.
    """

    open_connections = 0  # in this process: the connection cap counts them

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
        self.limits = limits = self.app.limits
        self.max_head = limits.max_header_bytes
        self.head_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
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
        self.write_timer: asyncio.TimerHandle | None = None
        self.end_timer: asyncio.TimerHandle | None = None  # the last deadline of a closing one
        self.counted = False  # in open_connections
        self.refused = False  # a refusal is written or owed, or the connection is closing
        self.ended = False  # the last answer is written: the connection is closing
        self.owed: bytes | None = None  # that refusal, until the earlier answers are out
        self.closing = False  # close after the answer being awaited (shutdown, upgrade)
        self.read_paused = False
        self.write_paused = False
        self.feeding = False  # inside feed_data: data_received arms the body timer after it
        self.serving = False  # inside _next's loop
        self.serve_again = False  # _next was asked for while inside its loop

    # ---- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if IngestProtocol.open_connections >= self.limits.max_connections:
            self.app.connection_refused()
            self.refused = True
            self.transport.write(  # type: ignore[union-attr]
                error_reply(
                    503,
                    "too_many_connections",
                    f"over {self.limits.max_connections} open connections "
                    "(CFN_INGEST_MAX_CONNECTIONS); retry later",
                )
            )
            self._end()
            return
        IngestProtocol.open_connections += 1
        self.counted = True
        self.server_state.connections.add(self)
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            IngestProtocol.open_connections -= 1
            self.counted = False
        self.server_state.connections.discard(self)
        self.transport = None
        self.refused = self.ended = True
        for request in self.queue:
            if request.handed and not request.complete:
                self._abandon(request)
        self.queue.clear()  # the app still answers what it was handed, to no one
        self._cancel_timers()
        if self.end_timer is not None:
            self.end_timer.cancel()
            self.end_timer = None

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now, or after the answer the app owes; in any case
        cut the connection off after the shutdown timeout."""
        transport = self.transport
        if transport is None:
            return
        self.end_timer = self.loop.call_later(self.limits.shutdown_timeout, transport.abort)
        queue = self.queue
        if queue and queue[0].handed and queue[0].complete and not queue[0].answered:
            self.closing = True
            self._pause_reading()
        else:
            self.refused = True
            transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.write_timer is None and self.transport is not None:
            self.write_timer = self.loop.call_later(self.limits.write_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        self._next()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # refused or closing: what a client still sends is discarded
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
        elif (
            reading is not None
            and reading is self.queue[0]
            and reading.handed
            and not reading.answered
            and self.body_timer is None
        ):
            self._arm_body()

    # ---- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.idle_timer is not None:  # only a request ends the idle state
            self.idle_timer.cancel()
            self.idle_timer = None
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
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            self.reading.has_body = True  # type: ignore[union-attr]
        self.reading.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        request = self.reading
        assert request is not None
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        parser = self.parser
        faulty = framing_error(parser.get_http_version(), request.headers)
        if faulty is not None:
            status, message = faulty
            self._refuse(status, _FRAMING_ERRORS[status], message)
            raise _Refused
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
        if request is self.queue[0]:
            self._next()

    def on_body(self, body: bytes) -> None:
        request = self.reading
        assert request is not None
        if request.answered or request.too_large or request.discard:
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
        elif request.handed and not request.discard:
            self._hand(request)

    # ---- serving ------------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        """`request` is now the one served and its head is read: check it, then hand it over
        once its body is complete."""
        request.handed = True
        try:
            reply = self.app.check(request)
        except Exception as exc:
            self._failed(request, exc)
            return
        if reply is None and request.too_large:  # read ahead while queued, over the limit
            reply = self.app.too_large(request)
        if reply is not None and request.delay > 0:
            # Held (a refusal that must not be had at event-loop speed): its body is dropped
            # meanwhile, and the body deadline still bounds the wait.
            request.discard = True
            request.chunks = []
            self.loop.call_later(request.delay, self.answer, request, reply)
            if not request.complete and not self.feeding:
                self._arm_body()
        elif reply is not None:
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
        try:
            self.app.handle(request, body, self)
        except Exception as exc:
            self._failed(request, exc)

    def _failed(self, request: Request, exc: Exception) -> None:
        """The app raised: its answer to that (500, its slot freed), then close."""
        try:
            reply = self.app.failed(request, exc)
        except Exception:
            reply = (500, b"content-type: application/json\r\n", b'{"error":"internal_error"}')
        self.closing = True
        self._reply(request, reply)

    def _abandon(self, request: Request) -> None:
        """`request` is dropped unanswered: the app gives back what it holds for it."""
        request.answered = True  # an answer the app still sends for it goes nowhere
        if request.held is not None:
            try:
                self.app.abandon(request)
            except Exception as exc:
                log.error("releasing a dropped request failed: %s", type(exc).__name__)

    def answer(self, request: Request, reply: Reply) -> None:
        """The app's answer to a request it was handed (ignored once the connection is gone)."""
        if self.transport is not None:
            self._reply(request, reply)

    def _reply(self, request: Request, reply: Reply) -> None:
        transport = self.transport
        if request.answered or transport is None or self.ended:
            return
        request.answered = True
        status, head, body = reply
        # Close after an answer sent while body bytes are owed: they would read as a request.
        owed = request.has_body and not request.complete
        close = self.closing or not request.keep_alive or owed
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
            self._end()
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
        """Serve what is owed, in a loop: an answer given at once (a GET) asks for the next
        request from inside this loop, which then goes round again instead of recursing."""
        if self.serving:
            self.serve_again = True
            return
        self.serving = True
        try:
            self.serve_again = True
            while self.serve_again:
                self.serve_again = False
                self._serve_one()
        finally:
            self.serving = False

    def _serve_one(self) -> None:
        transport = self.transport
        if transport is None or self.write_paused or self.ended:
            return
        queue = self.queue
        if queue:
            request = queue[0]
            if request.head_done and not request.handed:
                self._start(request)
            return
        if self.owed is not None:
            transport.write(self.owed)
            self.owed = None
            self._end()
        elif self.closing:
            self._end()
        elif not self.refused:
            self._arm_idle()

    def _end(self) -> None:
        """Close after the last answer: read nothing more, shut the write side once the answer is
        out, and close within LINGER seconds (a client still sending a body would otherwise get
        a reset that can destroy the answer before it reads it)."""
        transport = self.transport
        self.refused = self.closing = self.ended = True
        self._cancel_timers()
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
            self.end_timer = self.loop.call_later(LINGER, transport.close)
            # (reading goes on, discarding, so the client's bytes are taken, not reset)
            if self.read_paused:
                self.read_paused = False
                transport.resume_reading()
        else:
            transport.close()
            self.end_timer = self.loop.call_later(LINGER, transport.abort)

    # ---- refusals -----------------------------------------------------------------------------

    def _refuse(self, status: int, error: str, message: str) -> None:
        """Answer `status` and close, after the answers owed to the complete requests before
        the refused one (which is the one being read, if any: it is dropped)."""
        if self.refused:
            return
        self.refused = True
        self._cancel_timers()
        reading = self.reading
        if reading is not None and self.queue and self.queue[-1] is reading:
            self.queue.pop()
            self.reading = None
            if reading.handed:
                self._abandon(reading)
        self._pause_reading()
        self.owed = error_reply(status, error, message)
        if not self.queue:  # else it goes out after the last of their answers (_next)
            self._next()
        elif self.transport is not None and self.end_timer is None:
            # Owed after answers the app has yet to give: those are bounded by the ack
            # timeout; this bounds the connection whatever happens.
            self.end_timer = self.loop.call_later(
                self.limits.shutdown_timeout + self.body_timeout, self.transport.abort
            )

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

    def _cancel_timers(self) -> None:
        for timer in (self.head_timer, self.body_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = self.idle_timer = None

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
        self.closing = True  # the rest of that body would read as a new request
        self._reply(request, self.app.body_timed_out(request))  # and closes

    def _idle(self) -> None:
        self.idle_timer = None
        if self.transport is not None:
            self.refused = self.ended = True
            self.transport.close()
