"""HTTPS at the ingest itself (CFN_INGEST_TLS_CERTFILE/_KEYFILE): the same answers and the same
head and body guards as over plain HTTP, with a certificate from a CA made for the test."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.shell.broker import make_ca, sign_certificate
from tests.payloads import alert, encode
from tests.services import start_ingest

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
    process = start_ingest(  # ready on its admin port, plain HTTP
        folder,
        kafka,
        f"https{uuid.uuid4().hex[:8]}.",
        {
            "CFN_PARTITIONS": "2",
            "CFN_INGEST_SECRET": SECRET,
            "CFN_INGEST_TLS_CERTFILE": str(cert),
            "CFN_INGEST_TLS_KEYFILE": str(key),
            "CFN_INGEST_HEADER_TIMEOUT": f"{HEADER_TIMEOUT:g}s",
            "CFN_INGEST_BODY_TIMEOUT": f"{BODY_TIMEOUT:g}s",
        },
    )
    client = Https(process.port, ssl.create_default_context(cafile=str(ca)))
    try:
        answer = client.exchange(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n", 5
        )
        assert status(answer) == 200
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
        answer = b""
        try:
            while chunk := sock.recv(65536):  # until the server closes
                answer += chunk
        except OSError:
            pass
    assert not answer.startswith(b"HTTP"), answer[:100]  # no HTTP answer at all: TLS only


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


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str] | None:
    """(protocol version, cipher) of a handshake with `context`, or None if it is refused."""
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as sock,
        ):
            cipher = sock.cipher()
            assert cipher is not None
            return str(sock.version()), cipher[0]
    except (ssl.SSLError, OSError):
        return None


def _client(version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")  # the client offers anything
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: offered on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    return context


def test_the_tls_profile_refuses_old_protocols_and_static_rsa(https: Https) -> None:
    port = https.port
    assert _handshake(port, _client(ssl.TLSVersion.TLSv1)) is None
    assert _handshake(port, _client(ssl.TLSVersion.TLSv1_1)) is None
    # TLS 1.2 with only static-RSA key exchange on offer: refused.
    assert _handshake(port, _client(ssl.TLSVersion.TLSv1_2, "kRSA")) is None
    version, cipher = _handshake(port, _client(ssl.TLSVersion.TLSv1_2)) or ("", "")
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and "GCM" in cipher, cipher
    default = _handshake(port, ssl.create_default_context())
    assert default is not None and default[0] == "TLSv1.3"


def test_sighup_reloads_the_certificate_and_a_bad_pair_keeps_the_old_one(
    kafka: str, tmp_path: Path
) -> None:
    ca, ca_key = make_ca(tmp_path / "ca")
    old_cert, old_key = sign_certificate(ca, ca_key, tmp_path / "old", "old.local", server=True)
    new_cert, new_key = sign_certificate(ca, ca_key, tmp_path / "new", "new.local", server=True)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(old_cert.read_bytes())
    key.write_bytes(old_key.read_bytes())
    process = start_ingest(
        tmp_path,
        kafka,
        f"reload{uuid.uuid4().hex[:8]}.",
        {
            "CFN_PARTITIONS": "2",
            "CFN_INGEST_SECRET": SECRET,
            "CFN_INGEST_TLS_CERTFILE": str(cert),
            "CFN_INGEST_TLS_KEYFILE": str(key),
        },
    )
    port = process.port

    def served_name() -> str:
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as sock,
        ):
            peer: Any = sock.getpeercert()
        names = [value for rdn in peer["subject"] for key, value in rdn if key == "commonName"]
        return str(names[0])

    try:
        assert served_name() == "old.local"
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        process.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served_name() != "new.local":
            assert time.monotonic() < deadline, process.output
            time.sleep(0.2)
        key.write_bytes(old_key.read_bytes())  # a key that is not the certificate's
        process.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate reload failed" not in process.output:
            assert time.monotonic() < deadline, process.output
            time.sleep(0.2)
        assert served_name() == "new.local"
        assert process.proc is not None and process.proc.poll() is None
    finally:
        process.stop()
