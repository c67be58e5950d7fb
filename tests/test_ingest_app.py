"""ingest.app.IngestApp over ASGI messages and a recording sink, without Kafka or HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry

from cfn.ingest.app import IngestApp
from cfn.ingest.auth import SecretIndex
from cfn.ingest.settings import IngestSettings
from cfn.ingest.sink import Outcome, SendResult
from tests.fake_sinks import SubmitBySend
from tests.payloads import alert, encode

SECRET = "app-test-secret"


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
    return statuses[0], sink, registry


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
