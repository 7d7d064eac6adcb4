"""The proxy as one ASGI callable: health, authentication, routing, streaming forward."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from ondemand import __version__
from ondemand.asgi import (
    BodyTooLarge,
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
)
from ondemand.proxy.activity import Activity
from ondemand.proxy.auth import AuthFailure, Identity
from ondemand.proxy.responses import family_of, send_error
from ondemand.proxy.routes import Access, BadPath, Route, resolve
from ondemand.proxy.upstream import (
    StreamedResponse,
    Upstream,
    UpstreamBroken,
    UpstreamClient,
    UpstreamUnavailable,
    request_headers,
    response_headers,
)

if TYPE_CHECKING:
    from ondemand.proxy.settings import ProxySettings

log = logging.getLogger("ondemand.proxy")

_AUTH_MESSAGES = {
    "missing": "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "malformed": "malformed credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "invalid": "invalid API key",
}
_WWW_AUTHENTICATE = [(b"www-authenticate", b'Bearer realm="ollama-ondemand"')]
_STREAM_TYPES = (b"application/x-ndjson", b"text/event-stream")


# (status, body) for /ping: 200 ready, 204 initializing (no body), 503 unhealthy.
HealthCheck = Callable[[], Awaitable[tuple[int, Mapping[str, object]]]]
# Extra fields for /ondemand/status, given the caller's identity.
StatusExtra = Callable[[Identity], Mapping[str, object]]


class _Disconnected(Exception):
    pass


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
    """Authenticating, default-deny, streaming reverse proxy in front of one Ollama."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        upstream: UpstreamClient | None = None,
        health: HealthCheck | None = None,
        status_extra: StatusExtra | None = None,
    ) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.upstream: UpstreamClient = upstream or Upstream(
            settings.upstream, connect_timeout=settings.connect_timeout
        )
        self.activity = Activity()
        # Alone in front of an Ollama, health is whether it answers; under `serve`, the
        # supervisor knows better (starting, warming, a failed preload) and says so.
        self.health: HealthCheck = health or self._upstream_health
        self.status_extra = status_extra
        self._ping_task: asyncio.Task[bool] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # Websockets and other scopes are not part of Ollama's API: closing is the answer.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if raw_path == b"/ping":
            await send_ping(send, self.health)
            return
        family = family_of(raw_path)
        try:
            identity = self.keys.authenticate(scope["headers"])
        except AuthFailure as failure:
            # %r: the path is the client's, and must not be able to forge log lines.
            log.info(
                "refused %s %r: %s credentials", scope["method"], scope["path"], failure.reason
            )
            await send_error(
                send, family, 401, _AUTH_MESSAGES[failure.reason],
                code="invalid_api_key", headers=_WWW_AUTHENTICATE,
            )  # fmt: skip
            return
        try:
            route = resolve(raw_path)
        except BadPath as exc:
            await send_error(send, family, 400, f"malformed request path: {exc}")
            return
        if route is None:
            await self._local_route(scope, send, identity, raw_path, family)
            return
        if route.access is Access.ADMIN and not identity.admin:
            await send_error(
                send, family, 403, f"{route.path} needs an admin key; this key is a user key"
            )
            return
        await self._forward(scope, receive, send, route)

    async def _local_route(
        self, scope: Scope, send: Send, identity: Identity, raw_path: bytes, family: str
    ) -> None:
        if raw_path == b"/ondemand/status" and scope["method"] in ("GET", "HEAD"):
            await send_json(send, 200, await self._status(identity))
            return
        await send_error(send, family, 404, f"no such route: {scope['method']} {scope['path']}")

    async def _status(self, identity: Identity) -> dict[str, object]:
        code, body = await self.health()
        status: dict[str, object] = {
            "status": body.get("status", "starting") if code != 204 else "starting",
            "ready": code == 200,
            "version": __version__,
            "key": identity.name,
            "admin": identity.admin,
            **self.activity.snapshot(),
        }
        if self.status_extra is not None:
            status.update(self.status_extra(identity))
        return status

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

    # -- forwarding -------------------------------------------------------------------

    async def _read_body(self, receive: Receive, family: str, send: Send) -> bytes | None:
        """The whole request body, or None after answering 413/408 (or on disconnect)."""
        limit = self.settings.max_body
        try:
            return await read_body(receive, limit, self.settings.body_timeout)
        except TimeoutError:
            await send_error(send, family, 408, "timed out reading the request body")
        except BodyTooLarge:
            await send_error(
                send, family, 413, f"request body is larger than the limit of {limit} bytes"
            )
        except ClientDisconnected:
            pass
        return None

    async def _stream_body(self, receive: Receive) -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        family = route.family
        declared = header(scope, b"content-length")
        if declared is not None and not route.stream_body:
            try:
                too_big = int(declared) > self.settings.max_body
            except ValueError:
                await send_error(send, family, 400, "invalid Content-Length header")
                return
            if too_big:
                limit = self.settings.max_body
                await send_error(
                    send, family, 413, f"request body is larger than the limit of {limit} bytes"
                )
                return
        body: bytes | AsyncIterator[bytes]
        if route.stream_body:
            body = self._stream_body(receive)
        else:
            read = await self._read_body(receive, family, send)
            if read is None:
                return
            body = read
        self.activity.begin()
        try:
            await self._exchange(scope, receive, send, route, body)
        finally:
            self.activity.end()

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        body: bytes | AsyncIterator[bytes],
    ) -> None:
        if route.stream_body:
            # receive() belongs to the body reader here; a disconnect surfaces there.
            try:
                await self._relay(scope, send, route, body)
            except _Disconnected:
                log.info("client disconnected while sending %s", route.path)
            return
        # The body is read, so the next thing receive() reports is the client going away (or
        # our own response ending). One pending receive() per request cancels this task on a
        # disconnect; that is cheaper than running the exchange in a second task.
        task = asyncio.current_task()
        assert task is not None
        watch = _DisconnectWatch(task)
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(watch.on_receive)
        try:
            await self._relay(scope, send, route, body)
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            task.uncancel()
            log.info("client disconnected: %s %s cancelled", scope["method"], route.path)
        finally:
            watch.finished = True
            watcher.cancel()

    async def _relay(
        self, scope: Scope, send: Send, route: Route, body: bytes | AsyncIterator[bytes]
    ) -> None:
        try:
            response = await self.upstream.send(
                scope["method"],
                route.upstream_path,
                scope.get("query_string", b""),
                request_headers(scope["headers"]),
                body,
            )
        except UpstreamUnavailable as exc:
            log.warning("upstream unavailable for %s: %s", route.path, exc)
            await send_error(send, route.family, 502, "upstream Ollama is unavailable")
            return
        try:
            await self._send_response(send, route, response)
        finally:
            await response.aclose()

    async def _send_response(self, send: Send, route: Route, response: StreamedResponse) -> None:
        headers = response_headers(response.headers)
        content_type = next((v for n, v in headers if n == b"content-type"), b"")
        streaming = content_type.startswith(_STREAM_TYPES)
        if streaming:
            # Tell any buffering proxy in front of us (nginx) to pass chunks straight on.
            headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        remaining = _content_length(headers)
        try:
            async for chunk in response.chunks():
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        # Complete: one message instead of this chunk plus an empty last one.
                        await send({"type": "http.response.body", "body": chunk})
                        return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBroken as exc:
            log.warning("upstream closed %s mid-response: %s", route.path, exc)
            if streaming:
                await send(
                    {
                        "type": "http.response.body",
                        "body": _stream_error(content_type),
                        "more_body": True,
                    }
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _DisconnectWatch:
    __slots__ = ("disconnected", "finished", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.disconnected = False
        self.finished = False

    def on_receive(self, watcher: asyncio.Future[Message]) -> None:
        if self.finished or watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] == "http.disconnect":
            self.disconnected = True
            self.task.cancel()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _stream_error(content_type: bytes) -> bytes:
    """A final stream item that makes clients raise instead of silently truncating."""
    message = "upstream Ollama closed the stream before it was complete"
    if content_type.startswith(b"text/event-stream"):
        payload = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"
    return b'{"error":"' + message.encode() + b'"}\n'


def create_app(settings: ProxySettings) -> ProxyApp:
    return ProxyApp(settings)
