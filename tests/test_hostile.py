"""The public port against hostile clients, over raw sockets, with `cfn ingest` and a real broker:
every request is answered or its connection closed in bounded time, framing is RFC 9112's,
every admission slot comes back, and nothing internal answers on the public port."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.schemas import jsonio
from tests.kafka_util import drain, run
from tests.payloads import alert, encode
from tests.services import Process, cfn_env, metric_value, request, start_ingest

pytestmark = pytest.mark.broker

SECRET = "hostile-test-secret-0123456789"
WEBHOOK = "/webhooks/cloudflare"
KEEP_ALIVE, SHUTDOWN, MAX_CONNECTIONS = 2.0, 3.0, 40
LINGER = 2.0  # ingest.http.LINGER


@pytest.fixture(scope="module")
def ingest(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start_ingest(
        tmp_path_factory.mktemp("hostile"),
        kafka,
        "hostile.",
        {
            "CFN_INGEST_SECRET": SECRET,
            "CFN_INGEST_KEEP_ALIVE_TIMEOUT": f"{KEEP_ALIVE:g}s",
            "CFN_INGEST_HEADER_TIMEOUT": "2s",
            "CFN_INGEST_BODY_TIMEOUT": "3s",
            "CFN_INGEST_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "CFN_INGEST_THROTTLE_DELAY": "0.2s",
        },
    )
    yield process
    process.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def post(body: bytes, *extra: str, secret: str = SECRET) -> bytes:
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: {secret}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    )
    return (head + "".join(f"{line}\r\n" for line in extra) + "\r\n").encode() + body


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def read_until_closed(sock: socket.socket, wait: float) -> tuple[bytes, float | None]:
    """What arrives until the server closes (and when, from now), or `wait` passes (None)."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < wait:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, time.monotonic() - started
        if not chunk:
            return received, time.monotonic() - started
        received += chunk
    return received, None


def answers(data: bytes) -> list[int]:
    """The statuses of the answers in `data`, parsed by their framing (content-length)."""
    statuses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        assert match, head[:200]
        statuses.append(int(match.group(1)))
        length = re.search(rb"(?im)^content-length: (\d+)\r?$", head)
        data = rest[int(length.group(1)) if length else 0 :]
    return statuses


def in_flight(ingest: Process) -> float:
    return metric_value(ingest.admin_port, "cfn_ingest_requests_in_flight")


def test_a_body_whose_key_cannot_be_derived_is_dead_lettered_and_frees_its_slot(
    ingest: Process, kafka: str
) -> None:
    nested = b"[" * 1015 + b"]" * 1015  # valid JSON (orjson reads 1,024 levels)
    body = b'{"account_id":' + nested + b',"alert_type":"x"}'
    with connect(ingest.port) as sock:
        sock.sendall(post(body))
        data, _ = read_until_closed(sock, 10)
    assert answers(data[: data.index(b"}") + 1]) == [400], data[:300]
    assert b'"error":"bad_field"' in data
    assert in_flight(ingest) == 0
    dead = run(drain(kafka, "hostile.dlq", expect=1))
    record = jsonio.loads(dead[-1].value)
    assert record["reason"] == "bad_field" and record["raw_size"] == len(body)


def test_hundreds_of_pipelined_requests_are_all_answered(ingest: Process) -> None:
    with connect(ingest.port) as sock:
        sock.sendall(post(encode(alert())) + GET * 400)
        data = b""
        deadline = time.monotonic() + 20
        while answers_count(data) < 401 and time.monotonic() < deadline:
            sock.settimeout(1)
            try:
                data += sock.recv(1 << 20)
            except TimeoutError:
                continue
    assert answers(data) == [202] + [200] * 400


def answers_count(data: bytes) -> int:
    return data.count(b"HTTP/1.1 ")


def test_transfer_encoding_in_http_1_0_is_refused_and_nothing_after_it_is_served(
    ingest: Process,
) -> None:
    smuggled = (
        f"POST {WEBHOOK} HTTP/1.0\r\nHost: x\r\ncf-webhook-auth: {SECRET}\r\n"
        "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n"
    ).encode() + GET
    with connect(ingest.port) as sock:
        sock.sendall(smuggled)
        data, closed = read_until_closed(sock, 10)
    assert answers(data) == [400] and closed is not None


@pytest.mark.parametrize("coding", ["chunked, chunked", "gzip, chunked", "chunked, identity"])
def test_transfer_codings_other_than_one_final_chunked_are_refused(
    ingest: Process, coding: str
) -> None:
    request_bytes = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: {SECRET}\r\n"
        f"Transfer-Encoding: {coding}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    ).encode() + GET
    with connect(ingest.port) as sock:
        sock.sendall(request_bytes)
        data, closed = read_until_closed(sock, 10)
    assert answers(data) in ([400], [501]) and closed is not None


def test_an_early_413_with_body_bytes_owed_closes_the_connection(ingest: Process) -> None:
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: {SECRET}\r\n"
        "Content-Length: 2000000000\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with connect(ingest.port) as sock:
        sock.sendall(head)
        time.sleep(0.3)
        with contextlib.suppress(OSError):
            sock.sendall(GET)  # a desynced server would read this as body, or answer it
        data, closed = read_until_closed(sock, LINGER + 5)
    assert answers(data) == [413] and closed is not None


def test_stray_line_ends_do_not_keep_a_connection_open(ingest: Process) -> None:
    with connect(ingest.port) as sock:
        sock.sendall(GET)
        started = time.monotonic()
        sock.settimeout(0.5)
        data = b""
        closed = False
        while time.monotonic() - started < KEEP_ALIVE + 5:
            try:
                sock.sendall(b"\r\n")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    assert answers(data) == [200] and closed


def test_a_dripped_body_after_a_401_is_cut_off(ingest: Process) -> None:
    with connect(ingest.port) as sock:
        sock.sendall(post(b"x" * 1000, secret="wrong-secret-0123456789")[:-990])
        started = time.monotonic()
        closed_after = None
        data = b""
        sock.settimeout(0.5)
        while time.monotonic() - started < 15:
            try:
                sock.sendall(b"x")  # one byte a half second, never finishing
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
            if not chunk:
                closed_after = time.monotonic() - started
                break
            data += chunk
    assert answers(data) == [401]
    assert closed_after is not None and closed_after < LINGER + 3, closed_after


def test_connections_over_the_cap_are_refused_with_503(ingest: Process) -> None:
    held = [connect(ingest.port) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        with connect(ingest.port) as extra:
            data, closed = read_until_closed(extra, 5)
        assert answers(data) == [503] and closed is not None
        assert b"CFN_INGEST_MAX_CONNECTIONS" in data
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert request(ingest.port, "GET", "/healthz").status == 200  # freed again
    refused = "cfn_ingest_connections_refused_total"
    assert metric_value(ingest.admin_port, refused) >= 1


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/openapi.json"])
def test_internals_answer_only_on_the_admin_port(ingest: Process, path: str) -> None:
    assert request(ingest.port, "GET", path).status == 404
    assert request(ingest.admin_port, "GET", path).status in (200, 503)


def test_a_401_is_held_and_counted(ingest: Process) -> None:
    before = metric_value(ingest.admin_port, 'cfn_ingest_auth_failures_total{reason="mismatch"}')
    started = time.monotonic()
    for _ in range(3):
        status = request(
            ingest.port,
            "POST",
            WEBHOOK,
            encode(alert()),
            {"cf-webhook-auth": "a-wrong-guess-0123456789"},
        ).status
        assert status == 401
    assert time.monotonic() - started >= 3 * 0.1  # each held 0.5-1.5 x 0.2 s
    after = metric_value(ingest.admin_port, 'cfn_ingest_auth_failures_total{reason="mismatch"}')
    assert after - before == 3


def test_a_short_secret_is_refused_at_start_naming_the_variable(kafka: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cfn", "ingest"],
        env=cfn_env({"CFN_KAFKA_BOOTSTRAP": kafka, "CFN_INGEST_SECRET": "x"}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "CFN_INGEST_SECRET is shorter than 16 bytes" in result.stderr


def test_sighup_with_nothing_to_reload_is_logged_and_ignored(ingest: Process) -> None:
    ingest.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP ignored" not in ingest.output:
        assert time.monotonic() < deadline, ingest.output
        time.sleep(0.2)
    assert ingest.proc is not None and ingest.proc.poll() is None
    assert request(ingest.port, "GET", "/healthz").status == 200


def test_sigterm_ends_the_process_in_bounded_time_whatever_the_clients_do(
    kafka: str, tmp_path: Path
) -> None:
    process = start_ingest(
        tmp_path,
        kafka,
        "hostile.",
        {"CFN_INGEST_SECRET": SECRET, "CFN_INGEST_SHUTDOWN_TIMEOUT": f"{SHUTDOWN:g}s"},
    )
    clients = []
    try:
        stuck = connect(process.port)  # asks for much and reads nothing
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
        dripping = connect(process.port)
        dripping.sendall(post(encode(alert()))[:-5])  # a body that never ends
        idle = connect(process.port)
        idle.sendall(GET + b"\r\n")
        pipelined = connect(process.port)  # a long pipeline: the old drain stuck on it
        pipelined.sendall(post(encode(alert())) + GET * 400)
        clients = [stuck, dripping, idle, pipelined]
        time.sleep(0.5)
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        assert process.proc is not None
        try:
            process.proc.wait(SHUTDOWN + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM did not end the ingest in {SHUTDOWN + 10:g} s")
        took = time.monotonic() - started
        assert took < SHUTDOWN + 8, took
    finally:
        for sock in clients:
            sock.close()
        process.kill()
