"""Differential fuzzing of ingest.http's framing against h11, a reference HTTP/1.1 parser.

Generated streams of pipelined requests (Content-Length and chunked bodies, chunk extensions,
trailers, stray line ends, HTTP/1.0, and framing two parsers may read differently) are fed to
IngestProtocol, split at random points, and to h11. The ingest must never serve a request h11
would not: what it serves is a prefix of what h11 reads (it may refuse earlier, never later),
and a stream made only of well-formed requests is served whole, request for request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfn.ingest import http
from cfn.ingest.http import Connection, IngestProtocol, Reply, Request
from tests.test_http import Config, State, Transport

JSON = b"content-type: application/json\r\n"
Served = tuple[str, str, bytes]  # method, path, body


class Echo:
    """Answers every request at once (from its head for a GET, with its body for others)."""

    max_body = 1 << 20
    limits = http.Limits(
        max_header_bytes=16384,
        header_timeout=5,
        body_timeout=5,
        write_timeout=5,
        max_connections=10,
        shutdown_timeout=1,
    )

    def __init__(self) -> None:
        self.served: list[Served] = []

    def check(self, request: Request) -> Reply | None:
        if request.method in ("GET", "HEAD"):
            self.served.append((request.method, request.path, b""))
            return (200, JSON, b"{}")
        return None

    def handle(self, request: Request, body: bytes, connection: Connection) -> None:
        self.served.append((request.method, request.path, body))
        connection.answer(request, (202, JSON, b"{}"))

    def too_large(self, request: Request) -> Reply:
        return (413, JSON, b"{}")

    def body_timed_out(self, request: Request) -> Reply:
        return (408, JSON, b"{}")

    def abandon(self, request: Request) -> None:
        pass

    def failed(self, request: Request, exc: Exception) -> Reply:
        raise AssertionError(f"the app failed: {exc!r}")

    def connection_refused(self) -> None:
        pass


@pytest.fixture(autouse=True)
def no_connections() -> Iterator[None]:
    IngestProtocol.open_connections = 0
    yield
    IngestProtocol.open_connections = 0


def ingest_serves(stream: bytes, cuts: list[int]) -> list[Served]:
    async def scenario() -> list[Served]:
        app = Echo()
        protocol = IngestProtocol(Config(app), State(), _loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        start = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            if transport.ended():
                break
            if cut > start:
                protocol.data_received(stream[start:cut])
                start = cut
        protocol.connection_lost(None)
        return app.served

    return asyncio.run(scenario())


def h11_serves(stream: bytes) -> list[Served]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(stream)
    served: list[Served] = []
    method, path, body = "", "", b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return served
        if isinstance(event, h11.Request):
            method = event.method.decode()
            path = event.target.decode("latin-1").partition("?")[0]
            body = b""
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            served.append((method, path, body))
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return served
            conn.start_next_cycle()
        elif (
            event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed)
        ):
            return served


@dataclass(frozen=True)
class Part:
    raw: bytes
    clean: bool  # a well-formed request every HTTP/1.1 server must serve


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8)
BODY = st.binary(max_size=64)


@st.composite
def well_formed(draw: st.DrawFn) -> Part:
    path = "/" + draw(TOKEN)
    extra = "".join(f"x-{draw(TOKEN)}: {draw(TOKEN)}\r\n" for _ in range(draw(st.integers(0, 3))))
    if draw(st.booleans()):
        return Part(f"GET {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode(), True)
    body = draw(BODY)
    if draw(st.booleans()):
        head = f"POST {path} HTTP/1.1\r\nHost: h\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        return Part(head.encode() + body, True)
    sizes = draw(st.lists(st.integers(1, 16), max_size=4))
    chunks, at = b"", 0
    for size in sizes:
        piece = body[at : at + size]
        at += size
        if piece:
            ext = b";ext=1" if draw(st.booleans()) else b""
            chunks += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
    trailer = b"x-trailer: t\r\n" if draw(st.booleans()) else b""
    head = f"POST {path} HTTP/1.1\r\nHost: h\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
    return Part(head.encode() + chunks + b"0\r\n" + trailer + b"\r\n", True)


HOSTILE = [
    b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
    b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
    b"GET /a HTTP/2.0\r\n\r\n",
    b"GET /a\r\n\r\n",
    b"\x00\x01garbage\r\n\r\n",
]
# (Empty lines before a request line are left out: RFC 9112 section 2.2 says to ignore them,
# which the ingest does and h11 does not.)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bool, list[int]]:
    parts = draw(
        st.lists(
            st.one_of(well_formed(), st.sampled_from([Part(h, False) for h in HOSTILE])),
            min_size=1,
            max_size=6,
        )
    )
    stream = b"".join(p.raw for p in parts)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return stream, all(p.clean for p in parts), cuts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_the_ingest_serves_a_prefix_of_what_h11_reads(case: tuple[bytes, bool, list[int]]) -> None:
    stream, clean, cuts = case
    ours = ingest_serves(stream, cuts)
    reference = h11_serves(stream)
    assert ours == reference[: len(ours)], (stream, ours, reference)
    if clean:
        assert ours == reference, (stream, ours, reference)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_nothing_after_a_request_h11_refuses_is_served(hostile: bytes) -> None:
    stream = hostile + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"
    ours = ingest_serves(stream, [])
    reference = h11_serves(stream)
    assert ours == reference[: len(ours)], (ours, reference)
    if not any(path == "/after" for _, path, _ in reference):
        assert all(path != "/after" for _, path, _ in ours), ours
