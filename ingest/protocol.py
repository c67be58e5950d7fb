"""uvicorn's httptools protocol with the limits it lacks: header size, header and body time.

uvicorn + httptools buffer a request head of any size and wait for it, and for a body, forever; a
client that sends a 64 MiB header, or opens sockets and never finishes a request, costs memory or
sockets until it leaves. This subclass answers such a connection and closes it:

* a head over `max_header_bytes` -> 431. It is counted twice: the bytes received while a head
  is incomplete (a single endless header is refused before it is buffered), and the parsed
  request line and headers (a head that arrives whole in one read, in many small headers, is
  refused before the app sees it);
* the head not complete `header_timeout` seconds after its first byte (or after the connection
  opened) -> 408;
* the body not complete `body_timeout` seconds after the head -> 408. The app, waiting for the
  body, then receives `http.disconnect` and writes nothing (ingest.app.BodyIncomplete).

The body timer lives here rather than in the app because here it costs nothing when the body
arrives with the head, as a webhook's almost always does: the timer is armed only when a
`data_received` ends with a body still incomplete. An `asyncio.timeout` in the app cost every
request a timer and a task lookup.

The answers are JSON like the app's own errors, and none reaches the app, so none needs a
secret. Idle keep-alive connections stay under uvicorn's own `timeout_keep_alive`.

Requests on one connection are answered in order, each one (HTTP/1.1 pipelining). When bytes that
are not HTTP follow complete requests, those requests are answered first, then the 400, then the
connection closes: uvicorn's own 400 went out at once and closed the connection under requests
it had already dispatched, whose bodies may be in Kafka by then. A refusal (431 or 408) of a
later request waits for the earlier answers in the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cfn.schemas import jsonio

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}


def _answer(status: int, error: str, message: str) -> bytes:
    body = jsonio.dumps({"error": error, "message": message})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
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


class GuardedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """The protocol class for `uvicorn.run(http=...)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head, self._head_timeout, self._body_timeout = _configured()
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0  # received while the head is incomplete
        self._head_parsed = 0  # request line and headers, as parsed
        self._refused = False  # an error answer is written or owed: parse nothing more
        self._owed: bytes | None = None  # that answer, until earlier requests are answered
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the connection ends after the answers it owes
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm()
        super().data_received(data)
        if self._in_head and self._head_bytes > self._max_head:
            self._too_large()
        elif self._in_body and self._body_timer is None:
            self._arm_body()

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url) + 16  # method, version and line ends
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_parsed > self._max_head and not self._refused:
            self._too_large()
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._in_body = True
        self._disarm()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_body = False
        self._disarm_body()
        if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
            self._next_head()  # answered before its body ended (an early 401 or 413)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._disarm_body()  # its request has its answer
        if self._owed is not None:
            if self.pipeline:
                super().on_response_complete()  # the next queued request runs
            else:
                self._close_with(self._owed)
            return
        if not self.pipeline and not self._in_body:
            # A pipelined request's head is already parsed; the rest of an early-answered
            # request's body is not a head (on_message_complete starts the next one then).
            self._next_head()
        super().on_response_complete()
        if self._in_body and self._body_timer is None:
            self._arm_body()  # a pipelined request that now runs, its body still incomplete

    def _next_head(self) -> None:
        # The next bytes on this connection start a new head; uvicorn's keep-alive timer
        # covers the wait for them, ours starts with their first byte.
        self._in_head = True
        self._head_bytes = 0
        self._head_parsed = 0

    def on_message_begin(self) -> None:
        self._head_parsed = 0
        super().on_message_begin()

    def send_400_response(self, msg: str) -> None:
        """Not HTTP: answered after every request already read whole (uvicorn's own 400 went
        out at once and closed the connection under them). A request whose body broke never
        runs: answered now if it is the one being served (the app, waiting for the rest of
        its body, is told the client left and writes nothing), dropped if it was queued."""
        now = False
        if self._in_body:
            if self.pipeline:
                self.pipeline.popleft()  # the newest queued request: the broken one
            else:
                now = True
        self._refuse(400, "bad_request", "the request is not valid HTTP/1.1", now=now)

    def _arm_body(self) -> None:
        """Time the body of the request being served, from the read that ended its head (or
        from when it starts running, for one queued behind a pipelined request). A request
        already answered (an early 401 or 413) is not timed: its answer is out, and uvicorn's
        keep-alive timeout closes a connection that then stalls."""
        cycle = self.cycle
        if self.pipeline or cycle is None or cycle.response_started:
            return
        self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out, cycle)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self, cycle: Any) -> None:
        self._body_timer = None
        if self._in_body and self.cycle is cycle and not cycle.response_started:
            self._refuse(
                408,
                "request_timeout",
                f"the body did not arrive within {self._body_timeout:g}s (CFN_INGEST_BODY_TIMEOUT)",
                now=True,
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(
                408,
                "header_timeout",
                f"request head not complete within {self._head_timeout:g}s "
                "(CFN_INGEST_HEADER_TIMEOUT)",
            )

    def _too_large(self) -> None:
        self._refuse(
            431,
            "header_too_large",
            f"request head over {self._max_head} bytes (CFN_INGEST_MAX_HEADER_BYTES)",
        )

    def _owes_answers(self) -> bool:
        """Whether an earlier request on this connection still waits for its answer."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _refuse(self, status: int, error: str, message: str, *, now: bool = False) -> None:
        """Answer `status` and close, after the answers earlier requests are owed (`now`: the
        refused request is the one being served, so nothing earlier is owed)."""
        if self._refused:
            return
        self._in_head = self._in_body = False
        self._refused = True
        self._disarm()
        self._disarm_body()
        answer = _answer(status, error, message)
        if not now and self._owes_answers():
            self._owed = answer
            return
        self._close_with(answer)

    def _close_with(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
