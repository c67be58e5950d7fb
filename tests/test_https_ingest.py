"""HTTPS at the ingest itself (CFN_INGEST_TLS_CERTFILE/_KEYFILE): the same answers and the same
head and body guards as over plain HTTP, with a certificate from a CA made for the test."""

from __future__ import annotations

import re
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.broker import make_ca, sign_certificate
from tests.payloads import alert, encode
from tests.services import Process, cfn_env, free_port

pytestmark = pytest.mark.broker

SECRET = "https-test-secret"
WEBHOOK = "/webhooks/cloudflare"
HEADER_TIMEOUT, BODY_TIMEOUT = 2.0, 2.0


class Https:
    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")

    def exchange(self, data: bytes, wait: float = 15.0) -> bytes:
        """Send `data` and read until the server answers and closes or `wait` passes."""
        with self.connect() as sock:
            sock.sendall(data)
            return read_answer(sock, wait)


def read_answer(sock: ssl.SSLSocket, wait: float) -> bytes:
    received = b""
    deadline = time.monotonic() + wait
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if re.search(rb"\r\n\r\n", received):
                break
            continue
        except (ssl.SSLError, OSError):
            break
        if not chunk:
            break
        received += chunk
    return received


def post(body: bytes, *, secret: str = SECRET) -> bytes:
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\ncf-webhook-auth: {secret}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def status(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return int(match.group(1)) if match else None


@pytest.fixture(scope="module")
def https(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    folder = tmp_path_factory.mktemp("https")
    ca, ca_key = make_ca(folder / "ca")
    cert, key = sign_certificate(ca, ca_key, folder / "server", "ingest.local", server=True)
    port = free_port()
    process = Process(
        [sys.executable, "-m", "cfn", "ingest"],
        cfn_env(
            {
                "CFN_KAFKA_BOOTSTRAP": kafka,
                "CFN_TOPIC_PREFIX": f"https{uuid.uuid4().hex[:8]}.",
                "CFN_INGEST_PORT": str(port),
                "CFN_PARTITIONS": "2",
                "CFN_INGEST_SECRET": SECRET,
                "CFN_INGEST_TLS_CERTFILE": str(cert),
                "CFN_INGEST_TLS_KEYFILE": str(key),
                "CFN_INGEST_HEADER_TIMEOUT": f"{HEADER_TIMEOUT:g}s",
                "CFN_INGEST_BODY_TIMEOUT": f"{BODY_TIMEOUT:g}s",
            }
        ),
        Path(folder) / "ingest.log",
        port=port,
    )
    process.start()
    client = Https(port, ssl.create_default_context(cafile=str(ca)))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.proc is not None and process.proc.poll() is None, process.output
            try:
                answer = client.exchange(
                    b"GET /readyz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n", 5
                )
                if status(answer) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no HTTPS /readyz 200:\n{process.output}"
            time.sleep(0.3)
        yield client
    finally:
        process.stop()


def test_a_webhook_over_https_is_accepted(https: Https) -> None:
    assert status(https.exchange(post(encode(alert())))) == 202
    assert status(https.exchange(post(encode(alert()), secret="wrong"))) == 401


def test_plain_http_to_the_https_port_gets_no_answer(https: Https) -> None:
    with socket.create_connection(("127.0.0.1", https.port), timeout=10) as sock:
        sock.sendall(post(encode(alert())))
        sock.settimeout(5)
        try:
            answer = sock.recv(65536)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:100]


def test_an_unfinished_head_over_tls_gets_408_at_the_header_timeout(https: Https) -> None:
    started = time.monotonic()
    with https.connect() as sock:
        sock.sendall(f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        answer = read_answer(sock, HEADER_TIMEOUT + 10)
    took = time.monotonic() - started
    assert status(answer) == 408, answer[:200]
    assert HEADER_TIMEOUT - 0.5 <= took < HEADER_TIMEOUT + 8, took


def test_an_unfinished_body_over_tls_gets_408_at_the_body_timeout(https: Https) -> None:
    body = encode(alert())
    with https.connect() as sock:
        sock.sendall(post(body)[: -len(body) // 2])  # the head and half the body
        answer = read_answer(sock, BODY_TIMEOUT + 10)
    assert status(answer) == 408, answer[:200]


def test_an_oversized_head_over_tls_gets_431(https: Https) -> None:
    filler = "".join(f"x-pad-{i}: {'a' * 1000}\r\n" for i in range(64))  # 64 KB of headers
    head = f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\n{filler}\r\n".encode()
    assert status(https.exchange(head)) == 431
