"""HTTP load: a realistic webhook body, wrk at fixed concurrency, and parsing wrk's report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cfn.schemas import jsonio
from tests.bench.core import SECRET

WEBHOOK_PATH = "/webhooks/cloudflare"
_MARK = "CORRELATION-MARK"


def webhook_body(correlation: str, event: str = "ALERT_STATE_EVENT_START", ts: int = 0) -> bytes:
    """A health-check notification shaped like Cloudflare's (about 850 bytes)."""
    body: dict[str, Any] = {
        "name": "Origin health alert",
        "text": (
            "Origin 203.0.113.10 in pool origin-pool-eu-west-1 is unhealthy: HTTP 503 from "
            "GET /healthz (expected 2xx) after 3 consecutive failures"
        ),
        "data": {
            "zone_name": "shop.example.com",
            "pool_name": "origin-pool-eu-west-1",
            "origin_name": "origin-3",
            "origin_address": "203.0.113.10",
            "health_check_id": "6f2c1f2a4a0b4b0e9d1c8e3f5a7b9c2d",
            "expected_codes": "2xx",
            "actual_code": "503",
            "new_health": "Unhealthy",
            "old_health": "Healthy",
            "reason": "HTTP response code 503 does not match expected codes",
            "time": "2025-11-22T13:00:00Z",
        },
        "ts": ts or 1_763_816_400,
        "account_id": "9a7806061c88ada191ed06f989cc3dac",
        "policy_id": "c2b3e4f5a6b7c8d9e0f1a2b3c4d5e6f7",
        "policy_name": "Production origin health",
        "alert_type": "health_check_status_notification",
        "alert_correlation_id": correlation,
        "alert_event": event,
    }
    return jsonio.dumps(body)


def lua_script(path: Path, secret: str = SECRET) -> Path:
    """A wrk script that POSTs the realistic body, a new correlation id for every request.

    Distinct ids spread the records over the raw topic's partitions as real traffic does.
    """
    template = webhook_body(_MARK).decode()
    assert "%" not in template and "]==]" not in template
    template = template.replace(_MARK, "bench-%d-%d")
    path.write_text(
        f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["cf-webhook-auth"] = "{secret}"
local template = [==[{template}]==]
local counter = 0
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(template, tid or 0, counter))
end
"""
    )
    return path


@dataclass
class WrkResult:
    """wrk's report: successful requests per second and the latency percentiles in ms."""

    requests: int
    duration_s: float
    rps: float  # all responses
    ok_rps: float  # 2xx/3xx responses only: what the numbers below compare
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse `wrk --latency` output.

    Raises:
        ValueError: the output is not a wrk report (wrk failed; the text says why).
    """
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if total is None:
        raise ValueError(f"wrk gave no report:\n{output}")
    requests = int(total.group(1))
    duration_s = _ms(total.group(2) + total.group(3)) / 1000
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    errors_match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(g) for g in errors_match.groups()) if errors_match else 0
    percentiles = {
        int(m.group(1)): _ms(m.group(2))
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", output, flags=re.M)
    }
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        rps=requests / duration_s,
        ok_rps=(requests - non_2xx) / duration_s,
        non_2xx=non_2xx,
        socket_errors=socket_errors,
        p50_ms=percentiles.get(50, float("nan")),
        p90_ms=percentiles.get(90, float("nan")),
        p99_ms=percentiles.get(99, float("nan")),
    )


def run_wrk(url: str, script: Path, duration: float, connections: int, threads: int) -> WrkResult:
    """Run wrk once against `url` and return its parsed report."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=duration + 60
    )
    return parse_wrk(result.stdout + result.stderr)
