"""The ingest's admin listener: `/metrics`, `/readyz`, `/healthz` and `/openapi.json` on
CFN_INGEST_ADMIN_HOST:CFN_INGEST_ADMIN_PORT, plain HTTP, for Prometheus, probes and operators.

The public port serves the webhook route and `/healthz` only. With `cfn ingest --workers N`,
each process binds the first free port of CFN_INGEST_ADMIN_PORT ... CFN_INGEST_ADMIN_PORT+N-1,
so every process's own registry can be scraped.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from aiohttp import web

from cfn.ingest.http import Reply, head_fields

log = logging.getLogger("cfn.ingest")


class AdminError(Exception):
    """No admin port of the range could be bound."""


def _response(reply: Reply) -> web.Response:
    status, head, body = reply
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head_fields(head)}
    return web.Response(status=status, body=body, headers=headers)


def admin_app(routes: dict[str, Callable[[], Reply]]) -> web.Application:
    """An aiohttp app answering each GET path of `routes` with its reply."""

    def handler(route: Callable[[], Reply]) -> Callable[[web.Request], object]:
        async def answer(_request: web.Request) -> web.Response:
            return _response(route())

        return answer

    app = web.Application()
    for path, route in routes.items():
        app.router.add_get(path, handler(route))  # type: ignore[arg-type]
    return app


class AdminListener:
    """The admin listener of one ingest process, started and stopped by the app's lifespan."""

    def __init__(self, routes: dict[str, Callable[[], Reply]], host: str, port: int) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self, processes: int) -> int:
        """Bind the first free port of [port, port + processes) (port 0: any free one); return
        it."""
        runner = web.AppRunner(admin_app(self.routes), access_log=None, handle_signals=False)
        await runner.setup()
        last: OSError | None = None
        ports = [0] if self.port == 0 else range(self.port, self.port + max(1, processes))
        for port in ports:
            site = web.TCPSite(runner, self.host, port, shutdown_timeout=1.0)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    await runner.cleanup()
                    raise AdminError(f"admin port {self.host}:{port}: {exc.strerror}") from None
                last = exc
                continue
            self._runner = runner
            bound: int = runner.addresses[-1][1]  # (port 0: the one the system chose)
            log.info("admin listener on http://%s:%d (/metrics, /readyz)", self.host, bound)
            return bound
        await runner.cleanup()
        raise AdminError(
            f"admin ports {self.host}:{self.port}..{self.port + max(1, processes) - 1} are all "
            f"in use ({last.strerror if last else 'no port'}; CFN_INGEST_ADMIN_PORT)"
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
