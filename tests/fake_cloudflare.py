"""A fake of Cloudflare's alerting API (aiohttp) that checks every request cfn sends it and every
answer it gives against Cloudflare's published schemas (tests/cloudflare_contract.py).

It runs on its own thread and event loop, so in-process tests and `cfn` subprocesses can both
call it. Like Cloudflare, it sends a test POST to a destination when it is created or updated
(and refuses the write unless it gets a 2xx), and `deliver` sends an alert to a destination and
keeps a history record of it, as the real Notification History does.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from cfn.schemas import jsonio
from tests.cloudflare_contract import query_errors, request_errors, response_errors
from tests.services import free_port

BODY = web.RequestKey("body", dict[str, Any])
PREFIX = "/client/v4/accounts/{account_id}/alerting/v3"
TEST_TEXT = (
    "Hello World! This is a test message sent from https://cloudflare.com. If you are seeing "
    "this, your webhook is configured properly."
)


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Account:
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    silences: list[dict[str, Any]] = field(default_factory=list)


class FakeCloudflare:
    """Accounts, tokens ("read" or "write" per token) and scripted faults; `violations` lists
    every request or answer that broke the published contract (a test asserts it is empty)."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, str] = {}
        self.faults: list[tuple[int, str | None]] = []  # (status, Retry-After) of the next calls
        self.violations: list[str] = []
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (method, path, query)
        self.deliveries: list[int] = []  # the statuses of deliver() and test POSTs
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/client/v4"

    def account(self, account_id: str, token: str, permission: str = "write") -> Account:
        self.tokens[token] = permission
        return self.accounts.setdefault(account_id, Account())

    # ---- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._run(self._start())

    def stop(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        hooks = PREFIX + "/destinations/webhooks"
        app.router.add_get(hooks, self._list_webhooks)
        app.router.add_post(hooks, self._create_webhook)
        app.router.add_get(hooks + "/{webhook_id}", self._get_webhook)
        app.router.add_put(hooks + "/{webhook_id}", self._update_webhook)
        app.router.add_get(PREFIX + "/policies", self._list_policies)
        app.router.add_post(PREFIX + "/policies", self._create_policy)
        app.router.add_put(PREFIX + "/policies/{policy_id}", self._update_policy)
        app.router.add_get(PREFIX + "/history", self._history)
        app.router.add_get(PREFIX + "/silences", self._silences)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession()

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- what Cloudflare does on its own ------------------------------------------------------

    def deliver(self, account_id: str, body: dict[str, Any], *, record: bool = True) -> int:
        """Send `body` to the account's first destination with its current secret, as an alert,
        and keep its history record (`record`). Returns the status it got (0: unreachable)."""
        return int(self._run(self._deliver(account_id, body, record)))

    async def _deliver(self, account_id: str, body: dict[str, Any], record: bool) -> int:
        account = self.accounts[account_id]
        hook = next(iter(account.webhooks.values()))
        status = await self._post(hook, body)
        if record:
            account.history.append(self.history_record(hook["id"], body))
        return status

    @staticmethod
    def history_record(
        hook_id: str, body: dict[str, Any], sent: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "alert_body": body.get("text", ""),
            "alert_type": body.get("alert_type", ""),
            "description": "",
            "mechanism": hook_id,
            "mechanism_type": "webhook",
            "name": body.get("name", ""),
            "policy_id": body.get("policy_id", ""),
            "sent": sent or now_text(),
        }

    async def _post(self, hook: dict[str, Any], body: dict[str, Any]) -> int:
        assert self._session is not None
        headers = {"cf-webhook-auth": hook["secret"], "content-type": "application/json"}
        try:
            async with self._session.post(
                hook["url"],
                data=jsonio.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(5),
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.deliveries.append(status)
        hook["last_success" if 200 <= status < 300 else "last_failure"] = now_text()
        return status

    # ---- the API ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        template = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else ""
        )
        template = template.removeprefix("/client/v4")
        method = request.method
        query = dict(request.query)
        self.calls.append((method, template, query))
        body = jsonio.loads(await request.read()) if request.can_read_body else None
        where = f"{method} {template}"
        self.violations += [f"{where} request: {e}" for e in request_errors(method, template, body)]
        self.violations += [f"{where} query: {e}" for e in query_errors(method, template, query)]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        permission = self.tokens.get(token)
        if self.faults:
            status, retry_after = self.faults.pop(0)
            answer = _failure(status, 10429 if status == 429 else 10500, "scripted fault")
            headers = {"Retry-After": retry_after} if retry_after else {}
        elif permission is None or (method != "GET" and permission != "write"):
            answer = _failure(403, 10000, "Authentication error")
            headers = {}
        else:
            request[BODY] = body if isinstance(body, dict) else {}
            response = await handler(request)
            assert isinstance(response, web.Response) and response.body is not None
            answer = (response.status, jsonio.loads(response.body))  # type: ignore[arg-type]  # bytes here
            headers = {}
        status, payload = answer
        self.violations += [
            f"{where} answer {status}: {e}"
            for e in response_errors(method, template, status, payload)
        ]
        return web.Response(
            status=status,
            body=jsonio.dumps(payload),
            content_type="application/json",
            headers=headers,
        )

    def _of(self, request: web.Request) -> Account:
        return self.accounts.setdefault(request.match_info["account_id"], Account())

    async def _list_webhooks(self, request: web.Request) -> web.Response:
        hooks = [_public(h) for h in self._of(request).webhooks.values()]
        return _ok(
            hooks, info={"count": len(hooks), "page": 1, "per_page": 25, "total_count": len(hooks)}
        )

    async def _get_webhook(self, request: web.Request) -> web.Response:
        hook = self._of(request).webhooks.get(request.match_info["webhook_id"])
        if hook is None:
            return _fail(404, 17001, "webhook not found")
        return _ok(_public(hook))

    async def _create_webhook(self, request: web.Request) -> web.Response:
        body = request[BODY]
        hook = {
            "id": str(uuid.uuid4()),
            "name": body["name"],
            "url": body["url"],
            "secret": body.get("secret", ""),
            "type": "generic",
            "created_at": now_text(),
        }
        status = await self._post(hook, {"text": TEST_TEXT})
        if not 200 <= status < 300:
            return _fail(400, 17100, f"the test message got HTTP {status} from {body['url']}")
        self._of(request).webhooks[hook["id"]] = hook
        return _ok({"id": hook["id"]}, status=201)

    async def _update_webhook(self, request: web.Request) -> web.Response:
        hook = self._of(request).webhooks.get(request.match_info["webhook_id"])
        if hook is None:
            return _fail(404, 17001, "webhook not found")
        body = request[BODY]
        trial = {**hook, "url": body["url"], "secret": body.get("secret", "")}
        status = await self._post(trial, {"text": TEST_TEXT})
        if not 200 <= status < 300:
            return _fail(400, 17100, f"the test message got HTTP {status} from {body['url']}")
        hook.update(trial, name=body["name"], last_success=trial.get("last_success"))
        return _ok({"id": hook["id"]})

    async def _list_policies(self, request: web.Request) -> web.Response:
        return _ok(list(self._of(request).policies.values()))

    async def _create_policy(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[BODY]
        policy = {
            **body,
            "id": str(uuid.uuid4()),
            "created": now_text(),
            "modified": now_text(),
        }
        self._of(request).policies[policy["id"]] = policy
        return _ok({"id": policy["id"]})

    async def _update_policy(self, request: web.Request) -> web.Response:
        policies = self._of(request).policies
        policy_id = request.match_info["policy_id"]
        if policy_id not in policies:
            return _fail(404, 17002, "policy not found")
        body: dict[str, Any] = request[BODY]
        policies[policy_id] = {**policies[policy_id], **body, "modified": now_text()}
        return _ok({"id": policy_id})

    async def _history(self, request: web.Request) -> web.Response:
        query = request.query
        page, per_page = int(query.get("page", "1")), int(query.get("per_page", "25"))
        since = query.get("since")
        records = [
            r
            for r in self._of(request).history
            if since is None or _time(r["sent"]) >= _time(since)
        ]
        chunk = records[(page - 1) * per_page : page * per_page]
        info = {
            "count": len(chunk),
            "page": page,
            "per_page": per_page,
            "total_count": len(records),
        }
        return _ok(chunk, info=info)

    async def _silences(self, request: web.Request) -> web.Response:
        return _ok(self._of(request).silences)

    def all_history(self) -> Iterator[dict[str, Any]]:
        for account in self.accounts.values():
            yield from account.history


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _public(hook: dict[str, Any]) -> dict[str, Any]:
    """A destination as the API shows it: never its secret."""
    return {k: v for k, v in hook.items() if k != "secret" and v is not None}


def _ok(result: Any, *, status: int = 200, info: dict[str, Any] | None = None) -> web.Response:
    payload: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if info is not None:
        payload["result_info"] = info
    return web.Response(status=status, body=jsonio.dumps(payload), content_type="application/json")


def _failure(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }


def _fail(status: int, code: int, message: str) -> web.Response:
    _, payload = _failure(status, code, message)
    return web.Response(status=status, body=jsonio.dumps(payload), content_type="application/json")
