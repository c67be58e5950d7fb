"""The worker peer for `make bench`: quixstreams with exactly-once, dedup only.

What a user might run instead of `cfn worker` for its first step: read the raw topic, drop a
notification whose fingerprint its RocksDB state has seen (the same fingerprint as cfn's: sha256
over the tenant and the canonical JSON of the body, tools of the same kind: orjson), write the rest
to one topic, with quixstreams' exactly-once processing guarantee (a transaction per commit, the
state's changelog in it) and a 0.1 s commit interval like cfn's default. It answers
`GET /readyz` with `{"status": "ready", "processed": N}` like the worker, from a thread.

Runs under its own interpreter (quixstreams pins confluent-kafka, rocksdict, pydantic...; it is a
bench extra, never a dependency of cfn): tests/bench/pipeline_bench.py makes that venv.

Run: QUIX_PEER_BOOTSTRAP=127.0.0.1:9092 QUIX_PEER_TOPIC=cfn.raw QUIX_PEER_OUT=x.events \
     QUIX_PEER_GROUP=g QUIX_PEER_PORT=9471 QUIX_PEER_STATE=/tmp/q python tests/bench/quix_peer.py
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from quixstreams import Application  # type: ignore[import-not-found, unused-ignore]

PROCESSED = [0]


class _Readyz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ready", "processed": PROCESSED[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def fingerprint(tenant: str, body: Any) -> str:
    digest = hashlib.sha256()
    for part in (tenant.encode(), orjson.dumps(body, option=orjson.OPT_SORT_KEYS)):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["QUIX_PEER_PORT"])), _Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    app = Application(
        broker_address=os.environ["QUIX_PEER_BOOTSTRAP"],
        consumer_group=os.environ["QUIX_PEER_GROUP"],
        auto_offset_reset="earliest",
        commit_interval=0.1,
        processing_guarantee="exactly-once",
        state_dir=os.environ["QUIX_PEER_STATE"],
        loglevel="WARNING",
    )
    raw = app.topic(
        os.environ["QUIX_PEER_TOPIC"], key_deserializer="bytes", value_deserializer="bytes"
    )
    out = app.topic(os.environ["QUIX_PEER_OUT"], key_serializer="bytes", value_serializer="bytes")

    def unique(value: bytes, state: Any) -> bool:
        PROCESSED[0] += 1
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        key = fingerprint("default", body)
        if state.get(key):
            return False
        state.set(key, 1)
        return True

    app.dataframe(raw).filter(unique, stateful=True).to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
