"""ingest.http.IngestProtocol over a recording transport and an app that answers when told."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest

from cfn.ingest import http
from cfn.ingest.http import Connection, IngestProtocol, Reply, Request

JSON = b"content-type: application/json\r\n"


class Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.eof = False  # the write side is shut (after an answer that ends the connection)
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof, "written after close"
        self.written += data

        self.eof = False  # the write side is shut (an answer sent with body bytes owed)
        self.aborted = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def ended(self) -> bool:
        """Closed, or its write side shut: nothing more is answered on it."""
        return self.closed or self.eof

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def statuses(self) -> list[int]:
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3})", self.written)]


class App:
    """POST /w is handed over and answered by `release`; `deny` is answered from its head."""

    max_body = 64
    limits = http.Limits(
        max_header_bytes=1024,
        header_timeout=0.2,
        body_timeout=0.2,
        write_timeout=0.2,
        max_connections=4,
        shutdown_timeout=0.3,
    )

    def __init__(self) -> None:
        self.handed: list[tuple[Request, bytes, Connection]] = []
        self.refused: list[int] = []
        self.abandoned: list[Request] = []
        self.failures: list[Exception] = []

    def check(self, request: Request) -> Reply | None:
        if request.path == "/deny":
            return (401, JSON, b"{}")
        if request.method == "POST":
            declared = dict(request.headers).get(b"content-length", b"0")
            return self.too_large(request) if int(declared) > self.max_body else None
        return (200, JSON, b'{"path":"%s"}' % request.path.encode())

    def handle(self, request: Request, body: bytes, connection: Connection) -> None:
        self.handed.append((request, body, connection))

    def release(self, status: int = 202) -> None:
        request, body, connection = self.handed.pop(0)
        connection.answer(request, (status, JSON, body))

    def too_large(self, request: Request) -> Reply:
        self.refused.append(413)
        return (413, JSON, b"{}")

    def body_timed_out(self, request: Request) -> Reply:
        self.refused.append(408)
        return (408, JSON, b"{}")

    def abandon(self, request: Request) -> None:
        self.abandoned.append(request)

    def failed(self, request: Request, exc: Exception) -> Reply:
        self.failures.append(exc)
        return (500, JSON, b"{}")

    def connection_refused(self) -> None:
        self.refused.append(503)


class State:
    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.tasks: set[Any] = set()
        self.default_headers = [(b"server", b"test")]
        self.total_requests = 0


class Config:
    def __init__(self, app: App) -> None:
        self.loaded_app = app
        self.timeout_keep_alive = 5.0


@pytest.fixture(autouse=True)
def no_connections() -> Iterator[None]:
    IngestProtocol.open_connections = 0
    yield
    IngestProtocol.open_connections = 0


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    return (head + "".join(f"{line}\r\n" for line in extra) + "\r\n").encode() + body


def connect(app: App) -> tuple[IngestProtocol, Transport, State]:
    state = State()
    protocol = IngestProtocol(Config(app), state, _loop=asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, state


def run(scenario: Any) -> None:
    asyncio.run(scenario())


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(
            post("/w", b"one") + post("/w", b"two") + b"GET /x?q=1 HTTP/1.1\r\n\r\n"
        )
        assert [body for _, body, _ in app.handed] == [b"one"]  # the second waits its turn
        app.release()
        assert [body for _, body, _ in app.handed] == [b"two"]
        app.release(503)
        assert transport.statuses() == [202, 503, 200]
        assert transport.written.endswith(b'{"path":"/x"}')
        assert b"server: test\r\n" in transport.written
        assert not transport.ended()

    run(scenario)


def test_an_answer_sent_while_body_bytes_are_owed_ends_the_connection() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        whole = post("/deny", b"x" * 40)
        protocol.data_received(whole[:-30])  # the head and part of the body
        assert transport.statuses() == [401] and transport.eof
        assert b"connection: close" in transport.written
        # What the client still sends is never parsed: it would read as a request.
        protocol.data_received(whole[-30:] + post("/w", b"next"))
        assert app.handed == [] and transport.statuses() == [401]
        await asyncio.sleep(2.1)  # LINGER: then it is closed whatever the client does
        assert transport.closed

    run(scenario)


def test_a_body_that_stops_gets_408_at_the_body_timeout_and_the_connection_closes() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"whole") + post("/w", b"0123456789")[:-5])
        app.release()  # the second request runs now: its time starts here
        await asyncio.sleep(0.1)
        assert transport.statuses() == [202]
        await asyncio.sleep(0.2)
        assert transport.statuses() == [202, 408] and app.refused == [408]
        assert transport.ended() and b"connection: close" in transport.written

    run(scenario)


def test_a_head_that_stops_gets_408_after_the_answers_owed() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"first") + b"POST /w HTTP/1.1\r\nHo")
        await asyncio.sleep(0.3)
        assert transport.statuses() == [] and not transport.ended()  # 202 is owed first
        app.release()
        assert transport.statuses() == [202, 408] and transport.ended()

    run(scenario)


def test_garbage_gets_400_after_the_whole_requests_before_it() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"ok") + b"garbage\r\n\r\n")
        assert transport.statuses() == []
        app.release()
        assert transport.statuses() == [202, 400] and transport.ended()
        assert b'"error":"bad_request"' in transport.written

    run(scenario)


def test_heads_over_the_limit_get_431_whether_split_or_whole() -> None:
    async def scenario() -> None:
        app = App()
        protocol, endless, _ = connect(app)
        protocol.data_received(b"POST /w HTTP/1.1\r\nx-long: " + b"a" * 2000)
        assert endless.statuses() == [431] and endless.ended()
        protocol, many, _ = connect(app)
        protocol.data_received(post("/w", b"{}", *(f"x-h{i}: v" for i in range(200))))
        assert many.statuses() == [431] and app.handed == []

    run(scenario)


def test_bodies_over_the_limit_get_413_declared_or_streamed() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        chunked = (
            b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"40\r\n"
            + b"a" * 64
            + b"\r\n"
            + b"1\r\nb\r\n0\r\n\r\n"
        )
        protocol.data_received(chunked + post("/w", b"after"))
        assert transport.statuses() == [413] and app.refused == [413]
        assert app.handed == [] and transport.ended()  # the rest of that body was owed

    run(scenario)


def test_head_answers_carry_no_body_and_connection_close_is_honoured() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(
            b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        assert transport.statuses() == [200, 200]
        first, second = transport.written.split(b"HTTP/1.1 200 OK")[1:]
        assert b"content-length: 13\r\n" in first and first.endswith(b"\r\n\r\n")
        assert second.endswith(b'{"path":"/y"}') and transport.ended()

    run(scenario)


def test_expect_continue_is_answered_when_the_request_runs() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        head = b"POST /w HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        protocol.data_received(head)
        assert transport.written == http.CONTINUE
        protocol.data_received(b"body")
        app.release()
        assert transport.statuses() == [100, 202]

    run(scenario)


def test_shutdown_waits_for_the_answer_owed_then_closes() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, state = connect(app)
        protocol.data_received(post("/w", b"held"))
        protocol.shutdown()
        assert not transport.ended()
        app.release()
        assert transport.statuses() == [202] and transport.ended()
        assert b"connection: close" in transport.written
        idle, idle_transport, _ = connect(app)
        idle.shutdown()
        assert idle_transport.ended()
        idle.connection_lost(None)
        protocol.connection_lost(None)
        assert state.connections == set()

    run(scenario)


def test_reading_pauses_while_requests_queue_up_and_resumes_as_they_are_answered() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(b"".join(post("/w", b"%d" % i) for i in range(http.PIPELINE_DEPTH)))
        assert not transport.reading
        app.release()
        assert transport.reading
        while app.handed:
            app.release()
        assert transport.statuses() == [202] * http.PIPELINE_DEPTH

    run(scenario)


def test_an_answer_after_the_client_left_is_dropped() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"gone"))
        protocol.connection_lost(None)
        app.release()
        assert transport.written == b""

    run(scenario)


def test_paths_are_decoded_and_absolute_urls_routed_by_their_path() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(b"GET /a%20b HTTP/1.1\r\n\r\nGET http://h:1/c?x HTTP/1.1\r\n\r\n")
        assert transport.written.count(b'{"path":"/a b"}') == 1
        assert transport.written.endswith(b'{"path":"/c"}')

    run(scenario)


def test_idle_and_stalled_connections_close_at_the_keep_alive_timeout() -> None:
    async def scenario() -> None:
        app = App()
        config = Config(app)
        config.timeout_keep_alive = 0.2
        loop = asyncio.get_running_loop()
        idle = IngestProtocol(config, State(), _loop=loop)
        stalled = IngestProtocol(config, State(), _loop=loop)
        idle_transport, stalled_transport = Transport(), Transport()
        idle.connection_made(idle_transport)  # type: ignore[arg-type]
        stalled.connection_made(stalled_transport)  # type: ignore[arg-type]
        idle.data_received(b"GET /x HTTP/1.1\r\n\r\n")
        stalled.data_received(post("/deny", b"x" * 40)[:-10])  # answered, then its body stops
        # Answered with its body owed: ended at once, not left to the keep-alive timeout.
        assert stalled_transport.ended() and stalled_transport.statuses() == [401]
        await asyncio.sleep(0.1)
        assert not idle_transport.ended()
        await asyncio.sleep(0.2)
        assert idle_transport.ended() and idle_transport.statuses() == [200]

    run(scenario)


def test_answers_owed_to_a_long_pipeline_are_served_by_a_loop() -> None:
    # One data_received carrying many GETs answered at once from their heads: with a recursive
    # drain (answer -> next -> check -> answer ...) this overflowed the stack around 250.
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        http_depth, http.PIPELINE_DEPTH = http.PIPELINE_DEPTH, 10_000
        try:
            protocol.data_received(b"GET /x HTTP/1.1\r\n\r\n" * 3000)
        finally:
            http.PIPELINE_DEPTH = http_depth
        assert transport.statuses() == [200] * 3000 and not transport.ended()

    run(scenario)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        (b"POST /w HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n", 400),
        (b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n", 400),
        (b"POST /w HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n", 501),
        (b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
    ],
)
def test_faulty_framing_is_refused_and_the_connection_closed(head: bytes, status: int) -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(head + b"\r\n5\r\nhello\r\n0\r\n\r\nGET /openapi HTTP/1.1\r\n\r\n")
        assert transport.statuses() == [status] and transport.ended()
        assert app.handed == []

    run(scenario)


def test_a_declared_body_over_the_limit_with_expect_continue_closes_after_the_413() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(
            b"POST /w HTTP/1.1\r\nContent-Length: 2000000000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert transport.statuses() == [413] and transport.ended()
        assert b"100 Continue" not in transport.written
        protocol.data_received(b"GET /x HTTP/1.1\r\n\r\n")  # read as body by a desynced server
        assert transport.statuses() == [413]

    run(scenario)


def test_stray_line_ends_do_not_keep_an_idle_connection_open() -> None:
    async def scenario() -> None:
        app = App()
        config = Config(app)
        config.timeout_keep_alive = 0.2
        protocol = IngestProtocol(config, State(), _loop=asyncio.get_running_loop())
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"GET /x HTTP/1.1\r\n\r\n")
        for _ in range(4):
            await asyncio.sleep(0.06)
            protocol.data_received(b"\r\n")
        assert transport.ended() and transport.statuses() == [200]

    run(scenario)


def test_a_client_that_stops_reading_is_cut_off_at_the_write_timeout() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.pause_writing()
        await asyncio.sleep(0.1)
        assert not transport.aborted
        await asyncio.sleep(0.15)
        assert transport.aborted

    run(scenario)


def test_connections_over_the_cap_get_503_and_are_closed() -> None:
    async def scenario() -> None:
        app = App()
        opened = [connect(app) for _ in range(4)]
        protocol, transport, _ = connect(app)
        assert transport.statuses() == [503] and transport.ended() and app.refused == [503]
        assert b"CFN_INGEST_MAX_CONNECTIONS" in transport.written
        opened[0][0].connection_lost(None)  # one closes: the next is taken
        _, taken, _ = connect(app)
        assert taken.statuses() == [] and not taken.ended()
        protocol.connection_lost(None)  # a refused one was never counted
        assert IngestProtocol.open_connections == 4

    run(scenario)


def test_shutdown_cuts_off_a_connection_whatever_the_client_does() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"held"))  # handed; the app never answers
        protocol.shutdown()
        assert not transport.closed
        await asyncio.sleep(0.4)  # the shutdown timeout
        assert transport.aborted

    run(scenario)


class Failing(App):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def check(self, request: Request) -> Reply | None:
        if self.where == "check":
            raise RecursionError("maximum recursion depth exceeded")
        return super().check(request)

    def handle(self, request: Request, body: bytes, connection: Connection) -> None:
        raise RuntimeError("boom")


@pytest.mark.parametrize("where", ["check", "handle"])
def test_an_exception_in_the_app_is_answered_500_and_closes(where: str) -> None:
    async def scenario() -> None:
        app = Failing(where)
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"x") + b"GET /x HTTP/1.1\r\n\r\n")
        assert transport.statuses() == [500] and transport.ended()
        assert [type(exc) for exc in app.failures] == [
            RecursionError if where == "check" else RuntimeError
        ]

    run(scenario)


def test_a_request_dropped_mid_body_is_abandoned_so_the_app_frees_its_slot() -> None:
    async def scenario() -> None:
        app = App()
        for ending in ("lost", "garbage"):
            protocol, _, _ = connect(app)
            protocol.data_received(b"POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab")
            request = protocol.queue[0]
            request.held = "a slot"
            if ending == "lost":
                protocol.connection_lost(None)
            else:  # a chunked body whose chunk size is not hex
                protocol.data_received(b"cd\r\nzz\r\n")
            assert app.abandoned[-1] is request, ending
        assert len(app.abandoned) == 2

    run(scenario)


def test_a_held_answer_goes_out_after_its_delay_and_drops_the_body() -> None:
    class Holding(App):
        def check(self, request: Request) -> Reply | None:
            request.delay = 0.1
            return (401, JSON, b"{}")

    async def scenario() -> None:
        app = Holding()
        protocol, transport, _ = connect(app)
        protocol.data_received(post("/w", b"abc"))
        assert transport.statuses() == []
        await asyncio.sleep(0.15)
        assert transport.statuses() == [401] and not transport.ended()  # its body was read
        assert app.handed == []

    run(scenario)
