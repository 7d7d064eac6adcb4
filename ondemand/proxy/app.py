"""The proxy as one ASGI callable: health, CORS, authentication, routing, local routes.

Forwarding one request (policy, limits, the streamed answer, its usage) is ``exchange``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from ondemand import __version__
from ondemand.asgi import Headers, Message, Receive, Scope, Send, header, send_bytes, send_json
from ondemand.frontdoor import DoorCounts
from ondemand.proxy.activity import Activity
from ondemand.proxy.auth import AuthFailure, Identity, KeyStore, keystore_from_env
from ondemand.proxy.context import RequestContext
from ondemand.proxy.exchange import Exchange
from ondemand.proxy.lease_routes import AddModels, drain_route, lease_route, models_route
from ondemand.proxy.leases import LeaseBook
from ondemand.proxy.limits import Limits
from ondemand.proxy.metrics import CONTENT_TYPE, Metrics
from ondemand.proxy.policy import Residency
from ondemand.proxy.responses import Refusal, auth_refusal, family_of, send_error
from ondemand.proxy.routes import ALLOW, METHODS, Access, BadPath, resolve
from ondemand.proxy.runkeys import RunKeys, run_key_secret
from ondemand.proxy.settings import scaled_clock
from ondemand.proxy.upstream import UpstreamClient, UpstreamUnavailable
from ondemand.proxy.upstream_http import HttpUpstream
from ondemand.proxy.usage import Ledger, UsageRecord

if TYPE_CHECKING:
    from ondemand.proxy.settings import ProxySettings
    from ondemand.proxy.webhook import WebhookSender
    from ondemand.proxy.workers import Workers

log = logging.getLogger("ondemand.proxy")

KEYS_RELOAD_INTERVAL = 2.0  # seconds between looks at the keys file's modification time

# The failures a request can meet that /metrics counts (Metrics attributes).
Failure = Literal["auth_failures", "upstream_errors"]
FAILURES: tuple[Failure, ...] = get_args(Failure)
# (status, body) for /ping: 200 ready, 204 initializing (no body), 503 unhealthy.
HealthCheck = Callable[[], Awaitable[tuple[int, Mapping[str, object]]]]
# Extra fields for /ondemand/status, given the caller's identity.
StatusExtra = Callable[[Identity], Mapping[str, object]]


async def send_ping(send: Send, health: HealthCheck) -> None:
    status, body = await health()
    if status == 204:
        # No Content means no body; RunPod's load balancer reads this as "initializing".
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send_json(send, status, body)


class HealthApp:
    """Only ``/ping``, for a separate ``PORT_HEALTH`` listener."""

    def __init__(self, health: HealthCheck) -> None:
        self.health = health

    async def __call__(self, scope: Scope, _receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/ping":
            await send_ping(send, self.health)
        else:
            await send_json(send, 404, {"error": "only /ping is served on this port"})


class ProxyApp:
    """Authenticating, default-deny, metering, streaming reverse proxy in front of one Ollama."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        upstream: UpstreamClient | None = None,
        health: HealthCheck | None = None,
        status_extra: StatusExtra | None = None,
        add_models: AddModels | None = None,
        residency: Callable[[], Residency | None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.keys: KeyStore = settings.keys
        self.upstream: UpstreamClient = upstream or HttpUpstream(
            settings.upstream, connect_timeout=settings.connect_timeout
        )
        # One clock for idle time and lease expiry (tests pass a fake one).
        self.clock = clock or scaled_clock(settings.clock_scale)
        self.activity = Activity(self.clock)
        self.leases = LeaseBook(self.clock, RunKeys(run_key_secret(settings.env)))
        self.replica = settings.replica_id
        self._replica_header = [(b"x-ondemand-replica", self.replica.encode())]
        self.limits = Limits(settings.max_inflight)
        self.ledger = Ledger()
        # Counted by the server's front door (give it to serving.run), shown on /metrics.
        self.door = DoorCounts()
        self.metrics = Metrics(
            inflight=lambda: self.limits.inflight,
            last_request=lambda: self.activity.last,
            door=self.door,
        )
        # Alone in front of an Ollama, health is whether it answers; under `serve`, the
        # supervisor knows better (starting, warming, a failed preload) and says so.
        self.health: HealthCheck = health or self._upstream_health
        self.status_extra = status_extra
        self.add_models = add_models
        # Under `serve`: the preloaded models, whose keep_alive only admin keys may change.
        self.residency: Callable[[], Residency | None] = residency or (lambda: None)
        self.webhook: WebhookSender | None = None
        if settings.webhook is not None:
            from ondemand.proxy.webhook import WebhookSender

            self.webhook = WebhookSender(settings.webhook, on_event=self.metrics.webhook_event)
        keys_file = settings.env.get("ONDEMAND_KEYS_FILE", "")
        self._keys_file = Path(keys_file) if keys_file else None
        self._keys_mtime = _mtime(self._keys_file)
        # With ONDEMAND_PROXY_WORKERS > 1, the other processes serving the port (set by
        # whoever starts the server, which owns the listening socket).
        self.workers: Workers | None = None
        self._ping_task: asyncio.Task[bool] | None = None
        self._background: list[asyncio.Task[None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # Websockets and other scopes are not part of Ollama's API: closing is the answer.

    # -- start and stop ----------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if self.webhook is not None:
            await self.webhook.start()
        if self.workers is not None:
            await self.workers.start(self)
        if self._keys_file is not None:
            self._background.append(asyncio.ensure_future(self._watch_keys_file()))
            # SIGHUP reloads the keys file at once; only the main thread may listen.
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_keys)

    def stopping(self) -> None:
        """The server is about to stop: workers stop taking connections now and drain
        alongside this process (their last requests still leave here)."""
        if self.workers is not None:
            self.workers.stop_soon()

    async def shutdown(self) -> None:
        if self.workers is not None:
            await self.workers.stop()  # their last requests still leave here
        for task in self._background:
            task.cancel()
        if self.webhook is not None:
            await self.webhook.stop()
        await self.upstream.aclose()

    # -- keys ---------------------------------------------------------------------------

    def reload_keys(self) -> bool:
        """Re-read the keys file; a broken file keeps the keys that work now."""
        self._keys_mtime = _mtime(self._keys_file)
        try:
            store = keystore_from_env(self.settings.env)
        except Exception as exc:  # anything wrong in the file must not take keys away
            log.error("keys file not reloaded, the previous keys stay in force: %s", exc)
            return False
        self.keys = store
        log.info("keys reloaded: %s", ", ".join(store.names()) or "(none)")
        if self.workers is not None:
            self.workers.tell_all({"reload": 1})  # at once, not at their next look
        return True

    async def _watch_keys_file(self) -> None:
        while True:
            await asyncio.sleep(KEYS_RELOAD_INTERVAL)
            if _mtime(self._keys_file) != self._keys_mtime:
                self.reload_keys()

    # -- one request ---------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext.of(scope, self.settings.cors_origins)
        send = ctx.wrap(send)
        try:
            await self._dispatch(scope, receive, send, ctx)
        finally:
            ctx.log()

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if raw_path == b"/ping":
            ctx.quiet = True
            await send_ping(send, self.health)
            return
        family = family_of(raw_path)
        if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method"):
            await self._preflight(send, ctx)
            return
        try:
            identity = self.keys.authenticate(scope["headers"], self.leases.run_key)
        except AuthFailure as failure:
            self.count_failure("auth_failures", failure.reason)
            ctx.detail = f"credentials {failure.reason}"
            await auth_refusal(failure.reason).send(send, family)
            return
        ctx.key_name = identity.name
        try:
            route = resolve(raw_path)
        except BadPath as exc:
            await send_error(send, family, 400, f"malformed request path: {exc}")
            return
        if route is None:
            await self._local_route(scope, receive, send, identity, raw_path, family)
            return
        if scope["method"] not in METHODS:
            await send_error(
                send, family, 405, f"method {scope['method']} is not allowed",
                headers=[(b"allow", ALLOW)],
            )  # fmt: skip
            return
        if route.access is Access.ADMIN and not identity.admin:
            await send_error(
                send, family, 403, f"{route.path} needs an admin key; this key is a user key"
            )
            return
        await Exchange(self, scope, receive, send, route, identity, ctx).run()

    async def _preflight(self, send: Send, ctx: RequestContext) -> None:
        if ctx.cors_origin is None:
            await send_json(send, 403, {"error": "this origin is not allowed (CORS)"})
            return
        await send({"type": "http.response.start", "status": 204,
                    "headers": ctx.preflight_headers()})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    # -- admission: the one place that counts requests in flight -------------------------

    async def admit(self, identity: Identity) -> Refusal | None:
        """Let a request through to Ollama (taking its slot and marking activity), or say
        why not. Every ``admit`` that returns None is followed by one ``leave``."""
        return self.admit_now(identity)

    def admit_now(self, identity: Identity) -> Refusal | None:
        limited = self.limits.acquire(identity, time.monotonic())
        if limited is not None:
            self.metrics.rate_limited.labels(identity.name, limited.limit).inc()
            self.ledger.rate_limited(identity.name)
            retry = ((b"retry-after", str(limited.retry_after).encode()),)
            return Refusal(429, limited.message, retry)
        self.activity.begin()
        return None

    def leave(self, identity: Identity, record: UsageRecord | None) -> None:
        self.limits.release(identity)
        self.activity.end()
        if record is not None:
            self.usage(record)

    def count_failure(self, metric: Failure, label: str) -> None:
        """One more request refused for its credentials, or failed by Ollama."""
        getattr(self.metrics, metric).labels(label).inc()

    def usage(self, record: UsageRecord) -> None:
        """One forwarded request is done: count it, total it, send it on."""
        self.metrics.observe(record, record.route)
        self.ledger.add(record)
        if self.webhook is not None:
            self.webhook.submit(record.to_json())

    # -- local routes -------------------------------------------------------------------

    async def _local_route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        identity: Identity,
        raw_path: bytes,
        family: str,
    ) -> None:
        method = scope["method"]
        if raw_path.startswith(b"/ondemand/"):
            # Which replica answered: a client reaching every replica behind one URL
            # (taking a lease on each) counts them by this.
            send = _with_headers(send, self._replica_header)
        if raw_path == b"/ondemand/status" and method in ("GET", "HEAD"):
            await send_json(send, 200, await self._status(identity))
        elif raw_path == b"/ondemand/leases" or raw_path.startswith(b"/ondemand/leases/"):
            if not identity.admin:
                await send_error(send, family, 403, "/ondemand/leases needs an admin key")
                return
            await lease_route(self.leases, method, raw_path.decode(), receive, send)
        elif raw_path == b"/ondemand/drain":
            if not identity.admin:
                await send_error(send, family, 403, "/ondemand/drain needs an admin key")
                return
            await drain_route(self.leases, method, self.activity_now, receive, send)
        elif raw_path == b"/ondemand/models":
            if not identity.admin:
                await send_error(send, family, 403, "/ondemand/models needs an admin key")
                return
            await models_route(self.add_models, method, receive, send)
        elif raw_path == b"/metrics" and method in ("GET", "HEAD"):
            if not identity.admin:
                await send_error(send, family, 403, "/metrics needs an admin key")
                return
            await send_bytes(send, 200, self.metrics.exposition(), CONTENT_TYPE)
        else:
            await send_error(send, family, 404, f"no such route: {method} {scope['path']}")

    async def _status(self, identity: Identity) -> dict[str, object]:
        code, body = await self.health()
        status: dict[str, object] = {
            "status": body.get("status", "starting") if code != 204 else "starting",
            "ready": code == 200,
            "version": __version__,
            "replica": self.replica,
            "key": identity.name,
            "admin": identity.admin,
            **self.activity.snapshot(self.limits.inflight),
            "leases": {"live": len(self.leases.live())},
            "draining": self.leases.draining() is not None,
            "usage": self.ledger.view(None if identity.admin else identity.name),
        }
        if identity.admin:
            status["limits"] = {
                "max_inflight": self.settings.max_inflight,
                "keys": {
                    e.name: {"max_concurrency": e.max_concurrency, "rpm": e.rpm,
                             "models": sorted(e.models) if e.models is not None else None}
                    for e in self.keys.entries
                },
            }  # fmt: skip
            status["leases"] = {
                "live": len(self.leases.live()),
                "held": self.leases.view(),
                "draining": self.leases.drain_view(),
            }
            if self.webhook is not None:
                status["webhook"] = self.webhook.stats()
            if self.workers is not None:
                status["workers"] = self.workers.view(self.activity.total)
        if self.status_extra is not None:
            status.update(self.status_extra(identity))
        return status

    def activity_now(self) -> tuple[int, float]:
        """In flight now, and when the server was last used: the end of the last request,
        or when it became ready, or started. A server that is still warming up is not idle:
        the job waiting for it has had no chance to use it yet."""
        activity = self.activity
        last = max(activity.last or 0.0, activity.ready_at or 0.0) or activity.started_at
        if activity.ready_at is None and activity.warming:
            last = self.clock()
        return self.limits.inflight, last

    # -- health -----------------------------------------------------------------------

    async def _upstream_health(self) -> tuple[int, Mapping[str, object]]:
        if await self._upstream_ready():
            return 200, {"status": "ready"}
        return 503, {"status": "unhealthy", "error": "Ollama is not answering"}

    async def _upstream_ready(self) -> bool:
        # Concurrent probes share one upstream check, so a flood of anonymous pings costs
        # Ollama one small request at a time.
        if self._ping_task is None or self._ping_task.done():
            self._ping_task = asyncio.ensure_future(self._check_upstream())
        return await asyncio.shield(self._ping_task)

    async def _check_upstream(self) -> bool:
        try:
            status = await self.upstream.get_status("/", self.settings.ping_timeout)
        except UpstreamUnavailable:
            return False
        return status == 200


def _with_headers(send: Send, extra: Headers) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending


def _mtime(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def create_app(settings: ProxySettings) -> ProxyApp:
    return ProxyApp(settings)
