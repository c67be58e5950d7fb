"""The ingest application: a hand-written router over four endpoints, no framework.

ingest.http calls it directly (`check` with a request's head, `handle` with its body); it is also
an ASGI app, for uvicorn's lifespan and for tests, through the same two methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cfn.access import AccessDenied, diagnose
from cfn.health import Reachability
from cfn.ingest.admin import AdminError, AdminListener
from cfn.ingest.auth import DEFAULT_TENANT, SecretIndex, SecretsError
from cfn.ingest.fairness import REASONS, Admission, TenantLimits, TenantSlots
from cfn.ingest.http import Connection, IngestProtocol, Limits, Reply, Request, head_fields
from cfn.ingest.metrics import IngestMetrics
from cfn.ingest.openapi import openapi_document
from cfn.ingest.settings import IngestSettings
from cfn.ingest.sink import KafkaSink, Outcome, SendResult
from cfn.ingest.tls import CertificateError, reload_certificate
from cfn.ingest.watch import watch
from cfn.schemas import jsonio
from cfn.schemas.keys import incident_key
from cfn.schemas.records import DlqRecord
from cfn.topics import ensure_topics
from cfn.version import register_build_info

log = logging.getLogger("cfn.ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PATH = "/webhooks/cloudflare"
PROBE_INTERVAL = 1.0  # seconds between two checks that Kafka takes writes
SWEEP_INTERVAL = 1.0  # seconds between two looks for tenants no longer throttled
AUTH_HEADER = b"cf-webhook-auth"
_JSON = b"content-type: application/json\r\n"


# The answer to a write before the first producer has started.
NOT_CONNECTED = SendResult(Outcome.RETRIABLE, "NotConnected")


class BodyTooLarge(Exception):
    """The body passed CFN_INGEST_MAX_BODY; reading stopped there."""


class BodyIncomplete(Exception):
    """The connection closed before the whole body arrived (ASGI's http.disconnect)."""


class _Tenant:
    """One tenant's admission state and its metric children, looked up once per request."""

    __slots__ = ("accepted", "codes", "slots", "throttled")

    def __init__(self, slots: TenantSlots, metrics: IngestMetrics) -> None:
        self.slots = slots
        self.accepted = metrics.tenant_requests.labels(slots.name, 202)
        # Every series a panel divides by exists from the start, at zero; others on first use.
        self.codes = {code: metrics.tenant_requests.labels(slots.name, code) for code in (202, 429)}
        self.throttled = {
            reason: metrics.tenant_throttled.labels(slots.name, reason) for reason in REASONS
        }


class IngestApp:
    """Authenticate, keep the exact bytes in `cfn.raw`, and answer 202 only after the ack.

    Args:
        settings: the process settings.
        secrets: the tenant index; None means `--allow-unauthenticated` (every body is tenant
            "default").
        sink: the Kafka writer; the app starts and stops it in the ASGI lifespan.
        registry: where the metrics live (a fresh one per test).
        clock: epoch seconds, injected for tests.
    """

    def __init__(
        self,
        settings: IngestSettings,
        secrets: SecretIndex | None,
        sink: KafkaSink,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.max_body = settings.max_body
        self.limits = Limits.of(settings)
        self.secrets = secrets
        self.sink = sink
        self.registry = registry
        self.metrics = IngestMetrics.create(registry)
        register_build_info(registry)
        self.clock = clock
        self.kafka_ready = False
        self.reachability = Reachability(log, registry)
        self._connected = False
        # What a webhook gets before the first connection: 503 while Kafka is not up, 500 (an
        # operator must act) while it refuses this ingest (login, certificate, ACL).
        self._unconnected = NOT_CONNECTED
        # sink.replacements when the current outage began; -1 while Kafka is reachable
        self._replaced_before_outage = -1
        self._admission = Admission(settings.max_inflight, settings.tenant_defaults)
        self._tenants: dict[str, _Tenant] = {}
        self._configure_tenants()
        self._tasks: list[asyncio.Task[None]] = []
        self._rejecting: set[asyncio.Task[None]] = set()  # dead-letter writes in flight
        self._openapi = jsonio.dumps(openapi_document(settings))
        self._failures_seen: set[str] = set()
        self.admin = AdminListener(
            {
                "/metrics": self._metrics,
                "/readyz": self._readyz,
                "/healthz": self._healthz,
                "/openapi.json": self._openapi_json,
            },
            settings.admin_host,
            settings.admin_port,
        )
        # Request ids: 128 random bits each, like uuid4, from a generator seeded by os.urandom
        # per process: unique, not secret, and no system call per request.
        generator = random.Random()  # noqa: S311 (not a secret)
        self._random_bits = generator.getrandbits
        self._random = generator.random
        self._throttle_delay = settings.throttle_delay
        # The hot path's lookups, done once.
        self._raw_topic = settings.raw_topic
        self._accepted = self.metrics.requests.labels("202")
        self._observe_request = self.metrics.request_duration.observe
        self._observe_ack = self.metrics.ack_duration.observe
        self._observe_body = self.metrics.body_bytes.observe
        # Read at scrape time: nothing to update per request.
        self.metrics.in_flight.set_function(lambda: self._admission.inflight)
        self.metrics.connections.set_function(lambda: IngestProtocol.open_connections)
        self.metrics.tenant_slots.read = lambda: [
            (s.name, s.inflight, s.limit, s.guaranteed) for s in self._admission
        ]

    def _configure_tenants(self) -> None:
        """Give every configured tenant its limits (at start, and after each reload)."""
        if self.secrets is None:
            limits: dict[str, TenantLimits] = {DEFAULT_TENANT: TenantLimits()}
        else:
            limits = {
                name: self.secrets.limits.get(name, TenantLimits())
                for name in sorted(self.secrets.tenants)
            }
        self._admission.configure(limits)
        self._tenants = {
            slots.name: self._tenants.get(slots.name) or _Tenant(slots, self.metrics)
            for slots in self._admission
        }

    # ---- the HTTP interface (ingest.http calls these directly) ------------------------------

    def check(self, request: Request) -> Reply | None:
        """The answer `request` gets from its head alone, or None to read its body: only an
        authenticated webhook POST with an acceptable declared length gets None."""
        path = request.path
        if path == WEBHOOK_PATH:
            if request.method != "POST":
                return self._error(405, "method_not_allowed", "use POST", allow=b"POST")
            request.started = time.perf_counter()
            # Authentication first (a header and one SHA-256): slots are shared out by tenant,
            # and a request that is no tenant's takes none.
            presented, declared = _auth_and_length(request.headers)
            name = self._authenticate(presented)
            if name is None:
                reply = self._unauthorized(presented)
                self._observe_request(time.perf_counter() - request.started)
                request.delay = self._hold()  # a guess per connection every half second
                return reply
            request.tenant = name
            if declared is not None and declared > self.max_body:
                return self.too_large(request)
            tenant = self._tenants.get(name)
            if tenant is None:  # (the index and the tenants are replaced together)
                return self._unauthorized(b"removed")
            # Admitted before its body is read: the bodies held at once are bounded by the
            # slots (CFN_INGEST_MAX_INFLIGHT x CFN_INGEST_MAX_BODY).
            refused = self._admission.admit(tenant.slots, request.started)
            if refused is not None:
                return self._throttled(request, tenant, refused)
            request.held = tenant
            return None
        route = _GET_ROUTES.get(path)
        if route is None:
            return self._error(404, "not_found", f"no endpoint at {path}")
        if request.method not in ("GET", "HEAD"):
            return self._error(405, "method_not_allowed", "use GET", allow=b"GET, HEAD")
        return route(self)

    def handle(self, request: Request, body: bytes, connection: Connection) -> None:
        """Parse and write the body of a webhook `check` admitted; the answer goes to
        `connection` once Kafka has acknowledged (or refused) the write. Whatever happens, the
        request's slot is given back and it is answered."""
        tenant: _Tenant | None = request.held
        if tenant is None:  # not admitted by `check`: not a webhook this app let through
            raise RuntimeError("a body handed over without an admission")
        try:
            self._write(request, body, connection, tenant)
        except Exception as exc:
            connection.answer(request, self.failed(request, exc))

    def _write(
        self, request: Request, body: bytes, connection: Connection, tenant: _Tenant
    ) -> None:
        self._observe_body(len(body))
        received_at = int(self.clock() * 1000)
        request_id_b = b"%032x" % self._random_bits(128)
        parsed, reason, detail = _json_object(body)
        if parsed is None:
            self._background(
                self._reject(
                    request, connection, tenant, body, received_at, request_id_b, reason, detail
                )
            )
            return
        if not self._connected:
            self._finish(request, connection, tenant, self._kafka_failed(self._unconnected))
            return
        try:
            key = incident_key(tenant.slots.name, parsed)
        except Exception as exc:  # a key field no text can be made of (nested too deeply)
            detail = f"the record key cannot be derived from the body ({type(exc).__name__})"
            self._background(
                self._reject(
                    request,
                    connection,
                    tenant,
                    body,
                    received_at,
                    request_id_b,
                    "bad_field",
                    detail,
                )
            )
            return
        headers = [
            ("cfn-tenant", tenant.slots.name.encode()),
            ("cfn-received-at", b"%d" % received_at),
            ("cfn-request-id", request_id_b),
        ]
        self.sink.submit(
            self._raw_topic,
            key,
            body,
            headers,
            partial(self._written, request, connection, tenant, request_id_b, time.perf_counter()),
        )

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a dead-letter write and its answer) as a task kept until it ends."""
        task = asyncio.create_task(work)
        self._rejecting.add(task)
        task.add_done_callback(self._rejecting.discard)

    def connection_refused(self) -> None:
        """A connection over CFN_INGEST_MAX_CONNECTIONS was answered 503 and closed."""
        self.metrics.connections_refused.labels().inc()

    def release(self, request: Request) -> None:
        """Give back the admission slot `request` holds, if any (once)."""
        tenant: _Tenant | None = request.held
        if tenant is not None:
            request.held = None
            self._admission.release(tenant.slots)

    def abandon(self, request: Request) -> None:
        """`request` was dropped before its body was complete (the connection closed, or a
        framing error): its slot is given back."""
        self.release(request)

    def failed(self, request: Request, exc: BaseException) -> Reply:
        """The answer to an unexpected exception while serving `request`: its slot is given
        back, the exception counted (and logged once per kind), and the answer is a 500 naming
        its kind (never its message, which may quote the body)."""
        self.release(request)
        kind = type(exc).__name__
        self.metrics.internal_errors.labels(kind).inc()
        if kind not in self._failures_seen:
            self._failures_seen.add(kind)
            log.error("internal error serving a request: %s (logged once per kind)", kind)
        self._count_tenant(request.tenant, 500)
        return self._error(500, "internal_error", f"an internal error ({kind}); retry later")

    def too_large(self, request: Request) -> Reply:
        """The answer to a body over CFN_INGEST_MAX_BODY (declared, or as it arrives)."""
        self.release(request)
        self._count_tenant(request.tenant, 413)
        limit = self.max_body
        return self._error(
            413, "payload_too_large", f"body over {limit} bytes (CFN_INGEST_MAX_BODY)"
        )

    def body_timed_out(self, request: Request) -> Reply:
        """The answer to a body not complete within CFN_INGEST_BODY_TIMEOUT."""
        self.release(request)
        self._count_tenant(request.tenant, 408)
        return self._error(
            408,
            "request_timeout",
            f"the body did not arrive within {self.settings.body_timeout:g}s "
            "(CFN_INGEST_BODY_TIMEOUT)",
        )

    # ---- the webhook --------------------------------------------------------------------------

    def _written(
        self,
        request: Request,
        connection: Connection,
        tenant: _Tenant,
        request_id_b: bytes,
        ack_started: float,
        result: SendResult,
    ) -> None:
        try:
            self._observe_ack(time.perf_counter() - ack_started)
            if result.outcome is Outcome.ACKED:
                # request_id is hex: no JSON escaping needed.
                reply: Reply = (202, _JSON, b'{"status":"accepted","id":"%s"}' % request_id_b)
                self._accepted.inc()
            else:
                reply = self._kafka_failed(result)
            self._finish(request, connection, tenant, reply)
        except Exception as exc:
            connection.answer(request, self.failed(request, exc))

    def _finish(
        self, request: Request, connection: Connection, tenant: _Tenant, reply: Reply
    ) -> None:
        """Give back the slot, count the answer by tenant, and send it."""
        self.release(request)
        status = reply[0]
        if status == 202:
            tenant.accepted.inc()
        else:
            self._count_tenant(tenant.slots.name, status)
        self._observe_request(time.perf_counter() - request.started)
        connection.answer(request, reply)

    def _count_tenant(self, name: str, status: int) -> None:
        tenant = self._tenants.get(name)
        if tenant is None:  # no tenant (a head refused before its secret was checked)
            return
        counter = tenant.codes.get(status)
        if counter is None:  # a status this tenant has not had yet: its child, once
            counter = tenant.codes[status] = self.metrics.tenant_requests.labels(name, status)
        counter.inc()

    def _hold(self) -> float:
        """How long a refusal is held: 0.5 to 1.5 times CFN_INGEST_THROTTLE_DELAY."""
        return self._throttle_delay * (0.5 + self._random()) if self._throttle_delay else 0.0

    def _throttled(self, request: Request, tenant: _Tenant, reason: str) -> Reply:
        """Answer 429 for a tenant over its limits, after a hold of 0.5 to 1.5 times
        CFN_INGEST_THROTTLE_DELAY that takes no slot.

        The hold keeps a flood from spending the event loop on refusals: a client that retries
        at once turns each of its connections into a loop of 429s, thousands a second that
        delay every other tenant's requests (docs/fairness.md has the measurements); held, a
        connection costs at most about two refusals a second. The spread keeps the holds of
        connections refused together from ending together and coming back as one wave.
        """
        tenant.throttled[reason].inc()
        tenant.codes[429].inc()
        request.delay = self._hold()
        return self._error(
            429,
            "too_many_requests",
            self._admission.describe(tenant.slots, reason),
            retry=True,
        )

    def _unauthorized(self, presented: bytes | None) -> Reply:
        reason = "missing" if not presented else "mismatch"
        self.metrics.auth_failures.labels(reason).inc()
        return self._error(401, "unauthorized", _UNAUTHORIZED[reason])

    def _authenticate(self, presented: bytes | None) -> str | None:
        if self.secrets is None:
            return DEFAULT_TENANT
        if not presented:
            return None
        return self.secrets.tenant_for(presented)

    async def _reject(
        self,
        request: Request,
        connection: Connection,
        tenant: _Tenant,
        body: bytes,
        received_at: int,
        request_id_b: bytes,
        reason: str,
        detail: str,
    ) -> None:
        """Dead-letter an authenticated but unusable body, then answer 400.

        The 400 is sent only after the dead letter is acknowledged: Cloudflare does not retry a
        4xx, so the dead letter is the only copy. If it cannot be written, answer 503 instead
        and let Cloudflare retry; if anything raises, answer 500 (and give the slot back).
        """
        try:
            name = tenant.slots.name
            request_id = request_id_b.decode()
            record = DlqRecord(
                dlq_id=f"dlq_{request_id}",
                reason=reason,
                detail=detail,
                stage="ingest",
                tenant=name,
                received_at=received_at,
                source=None,
                raw_b64=DlqRecord.encode_raw(body),
                raw_size=len(body),
            )
            if not self._connected:
                reply = self._kafka_failed(self._unconnected)
            else:
                result = await self.sink.send(
                    self.settings.dlq_topic,
                    name.encode(),
                    jsonio.dumps(record),
                    [("cfn-tenant", name.encode()), ("cfn-reason", reason.encode())],
                )
                if result.outcome is not Outcome.ACKED:
                    reply = self._kafka_failed(result)
                else:
                    self.metrics.dead_letters.labels(reason).inc()
                    reply = self._error(400, reason, detail, request_id=request_id)
            self._finish(request, connection, tenant, reply)
        except Exception as exc:
            connection.answer(request, self.failed(request, exc))

    def _kafka_failed(self, result: SendResult) -> Reply:
        """The answer to a failed write."""
        cause = result.error or "unknown"
        self.metrics.kafka_errors.labels(result.outcome.value, cause).inc()
        status, error, message, retry = _KAFKA_ANSWERS[result.outcome]
        return self._error(status, error, message.format(cause=cause), retry=retry)

    # ---- GET endpoints ----------------------------------------------------------------------

    def _healthz(self) -> Reply:
        return (200, _JSON, b'{"status":"ok"}')

    def _readyz(self) -> Reply:
        if self.kafka_ready:
            return (200, _JSON, b'{"status":"ready"}')
        return (
            503,
            _JSON,
            b'{"status":"not_ready","message":"Kafka or the raw topic is not reachable"}',
        )

    def _metrics(self) -> Reply:
        return (
            200,
            b"content-type: %s\r\n" % CONTENT_TYPE_LATEST.encode(),
            generate_latest(self.registry),
        )

    def _openapi_json(self) -> Reply:
        return (200, _JSON, self._openapi)

    # ---- answers ----------------------------------------------------------------------------

    def _error(
        self,
        status: int,
        error: str,
        message: str,
        *,
        retry: bool = False,
        allow: bytes | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """A JSON error answer, counted by status."""
        payload: dict[str, str] = {"error": error, "message": message}
        if request_id is not None:
            payload["id"] = request_id
        head = _JSON
        if retry:
            head += b"retry-after: %d\r\n" % self.settings.retry_after
        if allow is not None:
            head += b"allow: %s\r\n" % allow
        self.metrics.requests.labels(status).inc()
        return (status, head, jsonio.dumps(payload))

    # ---- ASGI (uvicorn's lifespan; any ASGI server or test can also serve the app) ------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._asgi_http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _asgi_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request over ASGI messages, through `check` and `handle` as ingest.http does."""
        request = Request()
        request.method = scope["method"]
        request.path = scope["path"]
        request.headers = [(name.lower(), value) for name, value in scope["headers"]]
        reply = self.check(request)
        if reply is not None and request.delay:
            await asyncio.sleep(request.delay)
        if reply is None:
            try:
                body = await _read_body(receive, self.max_body)
            except BodyTooLarge:
                reply = self.too_large(request)
            except BodyIncomplete:
                # The connection closed before the body was complete: nothing is written; the
                # answer goes nowhere but counts the request as a 408.
                reply = self.body_timed_out(request)
            else:
                answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
                self.handle(request, body, FutureConnection(answered))
                reply = await answered
        status, head, body = reply
        headers = [(name.lower(), value) for name, value in head_fields(head)]
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ---- lifespan ---------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.admin.start(self.settings.workers)
                except AdminError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._tasks.append(asyncio.create_task(self._connect_loop()))
                self._tasks.append(asyncio.create_task(self._sweep_loop()))
                if self.settings.secrets_file is not None and self.secrets is not None:
                    # Rewrites by `cfn cloudflare` and Kubernetes' Secret updates send no SIGHUP.
                    watching = watch(self.settings.secrets_file, self.reload_secrets)
                    self._tasks.append(asyncio.create_task(watching))
                self._install_sighup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                for task in self._tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                try:  # what the producer holds gets the ack timeout; the whole stop is bounded
                    async with asyncio.timeout(self.settings.shutdown_timeout):
                        await self.sink.stop()
                except TimeoutError:
                    log.error("the Kafka producer did not stop within CFN_INGEST_SHUTDOWN_TIMEOUT")
                await self.admin.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _connect_loop(self) -> None:
        """Create topics and start the producer, retrying until Kafka answers; then keep
        `/readyz`, `cfn_kafka_up` and the producer current. Until connected, webhooks get 503
        (Cloudflare retries them), or 500 naming the cause while Kafka refuses this ingest (a
        failed login, an untrusted certificate, a missing ACL): retrying cures none of those,
        but the loop goes on, so a fix (an ACL granted) is picked up without a restart."""
        settings = self.settings
        attempt = 0
        while not self._connected:
            try:
                await ensure_topics(
                    settings.bootstrap,
                    [("raw", settings.raw_topic), ("dlq", settings.dlq_topic)],
                    settings.partitions,
                    settings.replication,
                    security=settings.security,
                )
                await self.sink.start()
                self._connected = True
            except Exception as exc:  # Kafka not there yet: the reachability log says so once
                await self.sink.stop()
                # While refused, look every time: an outage must not keep the refusal's 500s.
                look = self._unconnected.outcome is Outcome.PERMANENT or attempt % 10 == 0
                refused = await diagnose(
                    exc, "ingest", settings.bootstrap, settings.security, probe_now=look
                )
                if refused is not None:
                    self._refused(refused)
                elif look:
                    self._unconnected = NOT_CONNECTED  # no refusal now: an outage, 503
                self.reachability.report(False, type(exc).__name__)
                attempt += 1
                await asyncio.sleep(1.0)
        while True:
            await self.check_kafka()
            await asyncio.sleep(PROBE_INTERVAL)

    async def _sweep_loop(self) -> None:
        """Log, once, each tenant that is no longer throttled (ingest.fairness)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self._admission.sweep(time.perf_counter())

    def _refused(self, refused: AccessDenied) -> None:
        if self._unconnected != SendResult(Outcome.PERMANENT, refused.cause):
            log.error("%s", refused)  # once per cause: the reachability line follows
        self._unconnected = SendResult(Outcome.PERMANENT, refused.cause)

    async def check_kafka(self) -> None:
        """One probe: can the ingest write to the raw topic now? Updates `/readyz` and
        `cfn_kafka_up`; when Kafka comes back after being unreachable, the producer is replaced
        (records it held through the outage may carry sequence numbers the broker has lost),
        so the first request after an outage is answered by a producer the broker knows."""
        reason = await self.sink.probe(self._raw_topic)
        ok = reason is None
        self.kafka_ready = ok
        if not self.reachability.report(ok, reason or ""):
            return
        if not ok:
            self._replaced_before_outage = self.sink.replacements
        elif self._replaced_before_outage >= 0:
            # Back after an outage; a failed write may have replaced the producer already.
            if self.sink.replacements == self._replaced_before_outage and not self.sink.replacing:
                self.sink.replace("Kafka is back after an outage", broken=False)
            self._replaced_before_outage = -1

    def _install_sighup(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: read the secrets file (secrets and tenants' limits) and the TLS certificate
        and key again, in this process, without a restart. What fails to load keeps what was
        there; with nothing that can be reloaded, the signal is logged and ignored."""
        settings = self.settings
        done = False
        if settings.secrets_file is not None and self.secrets is not None:
            self.reload_secrets()
            done = True
        if settings.tls_certfile is not None and settings.tls_keyfile is not None:
            try:
                if reload_certificate(str(settings.tls_certfile), str(settings.tls_keyfile)):
                    log.info("TLS certificate reloaded")
            except CertificateError as exc:
                log.error("TLS certificate reload failed, keeping the previous one: %s", exc)
            done = True
        if not done:
            log.warning(
                "SIGHUP ignored: nothing to reload (no CFN_INGEST_SECRETS_FILE, no TLS files)"
            )

    def reload_secrets(self) -> bool:
        """Re-read the secrets and the tenants' limits; the new index and limits replace the old
        ones together, with no await between, so requests in flight finish with the tenant they
        started with and keep their slots counted. A bad file keeps the old configuration."""
        try:
            secrets = SecretIndex.load(self.settings.secret, self.settings.secrets_file)
        except SecretsError as exc:
            log.error("secrets reload failed, keeping the previous secrets: %s", exc)
            return False
        self.secrets = secrets
        self._configure_tenants()
        log.info("secrets reloaded: %d tenant(s)", len(secrets.tenants))
        return True


_UNAUTHORIZED = {
    "missing": "the cf-webhook-auth header is missing",
    "mismatch": "the cf-webhook-auth header matches no configured secret",
}

# What a failed Kafka write answers: (status, error code, message with {cause}, Retry-After).
# Only what an operator must fix is a 500; everything a retry or a new producer cures is a 503.
_KAFKA_ANSWERS: dict[Outcome, tuple[int, str, str, bool]] = {
    Outcome.TIMEOUT: (
        503,
        "kafka_unavailable",
        "Kafka did not acknowledge within CFN_INGEST_ACK_TIMEOUT",
        True,
    ),
    Outcome.RETRIABLE: (503, "kafka_unavailable", "Kafka is unavailable ({cause})", True),
    Outcome.RECOVERING: (503, "kafka_unavailable", "Kafka is unavailable ({cause})", True),
    # Under CFN_INGEST_MAX_BODY (which start-up keeps below the producer's request size) yet too
    # large for Kafka: the raw topic's max.message.bytes is smaller than cfn's. An operator must
    # raise it; a 500 has Cloudflare retry meanwhile, where a 413 would lose the body.
    Outcome.TOO_LARGE: (
        500,
        "kafka_rejected",
        "Kafka refused the record as too large for the raw topic (its max.message.bytes is "
        "below CFN_INGEST_MAX_BODY); an operator must act",
        True,
    ),
    Outcome.PERMANENT: (
        500,
        "kafka_rejected",
        "Kafka rejected the write ({cause}); an operator must act",
        True,
    ),
}


def _auth_and_length(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, int | None]:
    """The presented secret and the declared Content-Length (None if absent or not a number)."""
    presented: bytes | None = None
    declared: int | None = None
    for name, value in headers:
        if name == AUTH_HEADER:
            presented = value
        elif name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
    return presented, declared


def _json_object(body: bytes) -> tuple[dict[str, Any] | None, str, str]:
    """(the body as a JSON object, "", "") or (None, DLQ reason, detail)."""
    try:
        parsed = jsonio.loads(body)
    except jsonio.JSONDecodeError as exc:
        return None, "invalid_json", f"body is not valid JSON: {exc}"
    if not isinstance(parsed, dict):
        return None, "not_an_object", f"body is JSON {type(parsed).__name__}, not an object"
    return parsed, "", ""


async def _read_body(receive: Receive, limit: int) -> bytes:
    """A body from ASGI messages, read up to `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class FutureConnection:
    """The connection of a request served over ASGI: its answer resolves a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Reply]) -> None:
        self.future = future

    def answer(self, request: Request, reply: Reply) -> None:
        if not self.future.done():
            self.future.set_result(reply)


# The public port's GET endpoints; the rest are on the admin listener (ingest.admin).
_GET_ROUTES: dict[str, Callable[[IngestApp], Reply]] = {"/healthz": IngestApp._healthz}
