"""ingest.app.IngestApp over ASGI messages and a recording sink, without Kafka or HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cfn.ingest import app as app_module
from cfn.ingest.app import IngestApp
from cfn.ingest.auth import SecretIndex
from cfn.ingest.settings import IngestSettings
from cfn.ingest.sink import Outcome, SendResult
from tests.fake_sinks import SubmitBySend
from tests.payloads import alert, encode

SECRET = "app-test-secret-0123"


class RecordingSink(SubmitBySend):
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> SendResult:
        self.sent.append((topic, key, value))
        return SendResult(Outcome.ACKED)


def post(messages: list[dict[str, Any]], content_length: int) -> tuple[int, RecordingSink, Any]:
    """Run one POST through the app; returns (status sent or counted, sink, registry)."""
    sink = RecordingSink()
    registry = CollectorRegistry()
    app = IngestApp(
        IngestSettings(secret=SECRET),
        SecretIndex.load(SECRET, None),
        sink,  # type: ignore[arg-type]  # KafkaSink's one method used here
        registry,
    )
    app._connected = True
    return serve(app, messages, content_length)[0], sink, registry


def serve(app: IngestApp, messages: list[dict[str, Any]], content_length: int) -> list[int]:
    """One authenticated webhook POST through the app over ASGI; the statuses it sent."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/cloudflare",
        "headers": [
            (b"cf-webhook-auth", SECRET.encode()),
            (b"content-length", str(content_length).encode()),
        ],
    }
    inbox = list(messages)
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return statuses


def test_a_body_cut_short_by_a_disconnect_writes_nothing_and_counts_408() -> None:
    body = encode(alert(correlation="cut"))
    status, sink, registry = post(
        [
            {"type": "http.request", "body": body[:10], "more_body": True},
            {"type": "http.disconnect"},  # what the protocol's body timeout leads to
        ],
        len(body),
    )
    assert status == 408
    assert sink.sent == []
    assert registry.get_sample_value("cfn_ingest_requests_total", {"code": "408"}) == 1


def test_a_body_in_pieces_is_written_whole() -> None:
    body = encode(alert(correlation="pieces"))
    status, sink, _ = post(
        [
            {"type": "http.request", "body": body[:10], "more_body": True},
            {"type": "http.request", "body": body[10:], "more_body": False},
        ],
        len(body),
    )
    assert status == 202
    assert [(topic, value) for topic, _, value in sink.sent] == [("cfn.raw", body)]


class FailingSink(SubmitBySend):
    """A sink whose `submit` (the raw write) or `send` (the dead letter) raises."""

    def __init__(self, where: str) -> None:
        self.where = where

    def submit(self, *args: Any, **kwargs: Any) -> None:
        if self.where == "submit":
            raise BufferError("Local: Queue full")
        super().submit(*args, **kwargs)

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> SendResult:
        if self.where == "send":
            raise RuntimeError("dead letter write failed")
        return SendResult(Outcome.ACKED)


@pytest.mark.parametrize(
    ("where", "body", "status"),
    [
        ("key", encode(alert()), 400),  # dead-lettered as bad_field
        ("submit", encode(alert()), 500),
        ("send", b"not json", 500),
        ("ack", encode(alert()), 500),
    ],
)
def test_a_failure_at_each_step_answers_and_gives_the_slot_back(
    monkeypatch: pytest.MonkeyPatch, where: str, body: bytes, status: int
) -> None:
    if where == "key":

        def unkeyable(tenant: str, parsed: object) -> bytes:
            raise RecursionError("maximum recursion depth exceeded")

        monkeypatch.setattr(app_module, "incident_key", unkeyable)
    registry = CollectorRegistry()
    app = IngestApp(
        IngestSettings(secret=SECRET),
        SecretIndex.load(SECRET, None),
        FailingSink(where),  # type: ignore[arg-type]
        registry,
    )
    app._connected = True
    if where == "ack":
        monkeypatch.setattr(app, "_observe_ack", lambda _: 1 / 0)
    whole = [{"type": "http.request", "body": body, "more_body": False}]
    assert serve(app, whole, len(body)) == [status]
    assert app._admission.inflight == 0
    if status == 500:
        kinds = {"submit": "BufferError", "send": "RuntimeError", "ack": "ZeroDivisionError"}
        sample = {"kind": kinds[where]}
        assert registry.get_sample_value("cfn_ingest_internal_errors_total", sample) == 1


def test_a_max_body_over_what_a_raw_record_holds_is_refused_at_start() -> None:
    from cfn.config import ConfigError
    from cfn.ingest.settings import MAX_BODY_LIMIT

    assert IngestSettings.from_env({"CFN_INGEST_MAX_BODY": str(MAX_BODY_LIMIT)}).max_body
    with pytest.raises(ConfigError, match="CFN_INGEST_MAX_BODY must be at most"):
        IngestSettings.from_env({"CFN_INGEST_MAX_BODY": str(MAX_BODY_LIMIT + 1)})


def test_a_record_kafka_finds_too_large_is_a_500_cloudflare_retries() -> None:
    sink = RecordingSink()
    app = IngestApp(
        IngestSettings(secret=SECRET),
        SecretIndex.load(SECRET, None),
        sink,  # type: ignore[arg-type]
        CollectorRegistry(),
    )
    status, _, _ = app._kafka_failed(SendResult(Outcome.TOO_LARGE, "MSG_SIZE_TOO_LARGE"))
    assert status == 500  # a 413 would tell Cloudflare to drop the body
