"""Toxiproxy: the fault proxy between every Kafka client and each broker, and its HTTP API."""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio

REPO = Path(__file__).resolve().parents[2]
# tools/install-deps builds this version (TOXIPROXY_VERSION there) into the checkout.
VERSION = "v2.5.0"


class ToxiproxyError(Exception):
    """The proxy server is missing, did not start, or refused an API call."""


def binary() -> Path:
    """The toxiproxy-server that `tools/install-deps nemesis` built (or CFN_TOXIPROXY)."""
    path = Path(
        os.environ.get("CFN_TOXIPROXY") or REPO / ".local/bin" / f"toxiproxy-server-{VERSION}"
    )
    if not path.is_file():
        raise ToxiproxyError(f"{path} is missing: run `tools/install-deps nemesis` (make nemesis)")
    return path


@dataclass
class Toxiproxy:
    """One toxiproxy-server on loopback. Use it to cut, slow or black-hole the TCP links of
    every client to one broker at once; it cannot single out one client (one proxy per broker).
    """

    api_port: int
    log_path: Path
    seed: int = 1
    process: subprocess.Popen[bytes] | None = None
    proxies: dict[str, int] = field(default_factory=dict)  # name -> listen port

    def start(self, timeout: float = 10.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(binary()),
                "-host",
                "127.0.0.1",
                "-port",
                str(self.api_port),
                "-seed",
                str(self.seed),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/version")
                return
            except (OSError, ToxiproxyError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise ToxiproxyError(f"toxiproxy did not start; see {self.log_path}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def create(self, name: str, listen: int, upstream: int) -> None:
        """A proxy from 127.0.0.1:`listen` to 127.0.0.1:`upstream`, enabled."""
        body = {"name": name, "listen": f"127.0.0.1:{listen}", "upstream": f"127.0.0.1:{upstream}"}
        self._call("POST", "/proxies", {**body, "enabled": True})
        self.proxies[name] = listen

    def enable(self, name: str, enabled: bool = True) -> None:
        """Disabling closes every connection through the proxy and refuses new ones."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(self, proxy: str, toxic: str, kind: str, stream: str, **attributes: int) -> None:
        """A toxic of `kind` (latency, bandwidth, timeout...) on one direction of the proxy."""
        body = {"name": toxic, "type": kind, "stream": stream, "toxicity": 1.0}
        self._call("POST", f"/proxies/{proxy}/toxics", {**body, "attributes": attributes})

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._call("POST", "/reset")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=10)
        try:
            data = None if body is None else jsonio.dumps(body)
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            text = resp.read()
        finally:
            conn.close()
        if resp.status >= 300:
            raise ToxiproxyError(f"{method} {path}: {resp.status} {text[:200]!r}")
        return text
