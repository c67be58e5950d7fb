"""Resident memory of one `cfn ingest` process at its defaults, with N connections that each
hold an authenticated webhook at the worst point for the ingest: admitted, its body declared at
CFN_INGEST_MAX_BODY and sent but for its last byte, so the process buffers all it may.

Starts its own broker and ingest; prints JSON: VmRSS idle and under the held connections, and
how the connections were answered (held bodies get 408 at the body timeout; those over the
in-flight slots get 429).

Run: python -m tests.bench.ingest_memory [CONNECTIONS]
"""

from __future__ import annotations

import contextlib
import socket
import sys
import tempfile
import time
from pathlib import Path

from cfn.ingest.settings import IngestSettings
from cfn.schemas import jsonio
from cfn.shell.broker import LocalKafka
from tests.conftest import free_port_block
from tests.services import start_ingest

SECRET = "memory-probe-secret-0123456789"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main(connections: int) -> dict[str, object]:
    defaults = IngestSettings()
    body_size = defaults.max_body
    with tempfile.TemporaryDirectory(prefix="cfn-ingest-memory-") as folder:
        tmp = Path(folder)
        broker = LocalKafka(data_dir=tmp / "kafka", port=free_port_block(1))
        broker.start()
        ingest = start_ingest(
            tmp,
            broker.bootstrap,
            "mem.",
            {"CFN_INGEST_SECRET": SECRET, "CFN_INGEST_BODY_TIMEOUT": "60s"},
        )
        socks: list[socket.socket] = []
        try:
            assert ingest.proc is not None
            pid = ingest.proc.pid
            time.sleep(1.0)
            idle = rss_mib(pid)
            head = (
                f"POST /webhooks/cloudflare HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: {SECRET}\r\n"
                f"content-type: application/json\r\ncontent-length: {body_size}\r\n\r\n"
            ).encode()
            body = b"x" * (body_size - 1)
            for _ in range(connections):
                sock = socket.create_connection(("127.0.0.1", ingest.port), timeout=30)
                sock.sendall(head)
                with contextlib.suppress(OSError):  # a refused one is closed while sent
                    sock.sendall(body)
                socks.append(sock)
            time.sleep(3.0)
            held = rss_mib(pid)
            peak = held
            for _ in range(5):
                time.sleep(1.0)
                peak = max(peak, rss_mib(pid))
            return {
                "connections": connections,
                "max_body": body_size,
                "max_inflight": defaults.max_inflight,
                "kafka_buffer_kbytes": defaults.kafka_buffer_kbytes,
                "rss_idle_mib": round(idle, 1),
                "rss_held_mib": round(peak, 1),
            }
        finally:
            for sock in socks:
                sock.close()
            ingest.stop()
            broker.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(jsonio.dumps(main(count)).decode())
