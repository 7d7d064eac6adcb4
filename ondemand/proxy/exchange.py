"""One request forwarded to Ollama: body, policy, limits, the streamed answer, its usage."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ondemand.asgi import (
    BODY_GRACE,
    FRONT_DOOR,
    ON_DISCONNECT,
    BodyTooLarge,
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    header,
    read_body,
)
from ondemand.proxy import policy
from ondemand.proxy.metering import Meter
from ondemand.proxy.responses import send_error
from ondemand.proxy.upstream import (
    StreamedResponse,
    UpstreamBroken,
    UpstreamUnavailable,
    request_headers,
    response_headers,
)
from ondemand.proxy.usage import UsageRecord

if TYPE_CHECKING:
    from ondemand.proxy.app import ProxyApp
    from ondemand.proxy.auth import Identity
    from ondemand.proxy.context import RequestContext
    from ondemand.proxy.routes import Route

log = logging.getLogger("ondemand.proxy")

_STREAM_TYPES = (b"application/x-ndjson", b"text/event-stream")
_MAX_LISTING = 8 * 1024 * 1024  # a model list far larger than this is not Ollama's


class _Disconnected(Exception):
    pass


class Exchange:
    """Forwards one request; ``run`` answers it in every case and records its usage."""

    def __init__(
        self,
        proxy: ProxyApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        identity: Identity,
        ctx: RequestContext,
    ) -> None:
        self.proxy = proxy
        self.settings = proxy.settings
        self.scope = scope
        self.receive = receive
        self.send = send
        self.route = route
        self.identity = identity
        self.ctx = ctx
        self.meter: Meter | None = None
        self.strip_usage = False
        self.content_type: str | None = None  # set when the body was rewritten as a form
        self.door: dict[str, object] | None = (scope.get("extensions") or {}).get(FRONT_DOOR)

    async def error(
        self, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await send_error(self.send, self.route.family, status, message, headers=headers or ())

    async def run(self) -> None:
        body = await self._body()
        if body is None:
            return
        if isinstance(body, bytes):
            try:
                prepared = policy.prepare(
                    self.route.path,
                    body,
                    self.identity,
                    self.settings.keep_alive,
                    residency=self.proxy.residency(),
                    content_type=_single_header(self.scope, b"content-type"),
                    content_encoding=_single_header(self.scope, b"content-encoding"),
                    query=self.scope.get("query_string", b""),
                )
                policy.check_path_model(self.route.path, self.identity)
            except policy.Rejected as rejected:
                await self.error(rejected.status, rejected.message)
                return
            self.ctx.model = prepared.model or _path_model(self.route.path)
            self.strip_usage = prepared.strip_usage
            self.content_type = prepared.content_type
            body = prepared.body
        refused = await self.proxy.admit(self.identity)
        if refused is not None:
            await refused.send(self.send, self.route.family)
            return
        try:
            await self._exchange(body)
        finally:
            self.proxy.leave(self.identity, self._record())

    # -- the request body -------------------------------------------------------------

    async def _body(self) -> bytes | AsyncIterator[bytes] | None:
        """The body to forward, or None once the request has been answered here."""
        if self.route.stream_body:
            return self._stream_body()
        limit = self.settings.max_body
        declared = header(self.scope, b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await self.error(400, "invalid Content-Length header")
                return None
            if too_big:
                await self.error(413, f"request body is larger than the limit of {limit} bytes")
                return None
        # A front door at least as strict times the body out itself: no timer here.
        timeout: float | None = self.settings.body_timeout
        grace = self.door.get(BODY_GRACE) if self.door is not None else None
        if isinstance(grace, float | int) and grace <= self.settings.body_timeout:
            timeout = None
        try:
            return await read_body(self.receive, limit, timeout)
        except TimeoutError:
            await self.error(408, "timed out reading the request body")
        except BodyTooLarge:
            await self.error(413, f"request body is larger than the limit of {limit} bytes")
        except ClientDisconnected:
            pass
        return None

    async def _stream_body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    # -- forwarding and cancellation --------------------------------------------------

    async def _exchange(self, body: bytes | AsyncIterator[bytes]) -> None:
        route = self.route
        if route.stream_body:
            # receive() belongs to the body reader here; a disconnect surfaces there.
            try:
                await self._relay(body)
            except _Disconnected:
                log.info("client disconnected while sending %s", route.path)
            return
        # A client going away cancels this task. The front door says so with a callback;
        # elsewhere the body is read, so the next thing receive() reports is the client
        # going away (or our own response ending), and one pending receive() watches.
        task = asyncio.current_task()
        assert task is not None
        watch = _DisconnectWatch(task)
        on_disconnect = self.door.get(ON_DISCONNECT) if self.door is not None else None
        watcher: asyncio.Future[Message] | None = None
        if callable(on_disconnect):
            on_disconnect(watch.lost)
        else:
            watcher = asyncio.ensure_future(self.receive())
            watcher.add_done_callback(watch.on_receive)
        try:
            await self._relay(body)
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            task.uncancel()
            self.ctx.status = 499  # as nginx calls "the client closed the request"
            log.info("client disconnected: %s %s cancelled", self.ctx.method, route.path)
        finally:
            watch.finished = True
            if watcher is not None:
                watcher.cancel()
            elif callable(on_disconnect):
                on_disconnect(None)

    async def _relay(self, body: bytes | AsyncIterator[bytes]) -> None:
        headers = request_headers(self.scope["headers"])
        if self.content_type is not None:
            headers = [(n, v) for n, v in headers if n != b"content-type"]
            headers.append((b"content-type", self.content_type.encode("latin-1")))
        headers.append((b"x-request-id", self.ctx.request_id.encode()))
        try:
            response = await self.proxy.upstream.send(
                self.ctx.method,
                self.route.upstream_path,
                self.scope.get("query_string", b""),
                headers,
                body,
            )
        except UpstreamUnavailable as exc:
            self.proxy.count_failure("upstream_errors", "unavailable")
            log.warning("upstream unavailable for %s: %s", self.route.path, exc)
            if (await self.proxy.health())[0] == 204:
                # Still starting: a platform whose probe counts 204 as healthy routes
                # traffic here already. Not a gateway failure, and clients retry a 503.
                retry = [(b"retry-after", b"2")]
                await self.error(503, "Ollama is still starting; retry shortly", headers=retry)
                return
            await self.error(502, "upstream Ollama is unavailable")
            return
        try:
            if self._filters_listing(response):
                await self._send_filtered(response)
            else:
                await self._send_response(response)
        finally:
            await response.aclose()

    def _filters_listing(self, response: StreamedResponse) -> bool:
        entry = self.identity.entry
        return (
            self.route.path in policy.LIST_ROUTES
            and entry is not None
            and entry.models is not None
            and response.status == 200
        )

    async def _send_filtered(self, response: StreamedResponse) -> None:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.chunks():
                size += len(chunk)
                if size > _MAX_LISTING:
                    await self.error(502, "the model list from Ollama is too large")
                    return
                chunks.append(chunk)
        except UpstreamBroken:
            self.proxy.count_failure("upstream_errors", "broken")
            await self.error(502, "upstream Ollama closed the answer before it was complete")
            return
        body = policy.filter_listing(self.route.path, b"".join(chunks), self.identity)
        headers = [(n, v) for n, v in response_headers(response.headers) if n != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def _send_response(self, response: StreamedResponse) -> None:
        route = self.route
        send = self.send
        headers = response_headers(response.headers)
        content_type = next((v for n, v in headers if n == b"content-type"), b"")
        streaming = content_type.startswith(_STREAM_TYPES)
        if streaming:
            # Tell any buffering proxy in front of us (nginx) to pass chunks straight on.
            headers.append((b"x-accel-buffering", b"no"))
        meter = None
        if route.path in policy.MODEL_ROUTES and response.status == 200:
            meter = self.meter = Meter(
                family="openai" if route.family == "openai" else "native",
                content_type=content_type,
                strip_usage=self.strip_usage and streaming,
            )
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        remaining = _content_length(headers)
        try:
            async for chunk in response.chunks():
                out = meter.feed(chunk) if meter is not None else chunk
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        if meter is not None:
                            out += meter.finish()
                        # Complete: one message instead of this chunk plus an empty last one.
                        await send({"type": "http.response.body", "body": out})
                        return
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    # The first bytes are noted: the rest of a stream goes to the server as is.
                    send = self.ctx.unwrapped or send
        except UpstreamBroken as exc:
            self.proxy.count_failure("upstream_errors", "broken")
            log.warning("upstream closed %s mid-response: %s", route.path, exc)
            if streaming:
                tail = meter.finish() if meter is not None else b""
                await send(
                    {
                        "type": "http.response.body",
                        "body": tail + _stream_error(content_type),
                        "more_body": True,
                    }
                )
                meter = None
        tail = meter.finish() if meter is not None else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- usage --------------------------------------------------------------------------

    def _record(self) -> UsageRecord:
        ctx = self.ctx
        meter = self.meter
        if meter is not None:
            ctx.prompt_tokens, ctx.completion_tokens = meter.prompt_tokens, meter.completion_tokens
        return UsageRecord(
            ts=ctx.ts,
            request_id=ctx.request_id,
            key_name=self.identity.name,
            model=ctx.model,
            route=self.route.label,
            method=ctx.method,
            status=ctx.status if ctx.status is not None else 499,
            prompt_tokens=ctx.prompt_tokens,
            completion_tokens=ctx.completion_tokens,
            duration_ms=ctx.duration_ms,
            ttft_ms=ctx.ttft_ms,
        )


class _DisconnectWatch:
    __slots__ = ("disconnected", "finished", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.disconnected = False
        self.finished = False

    def on_receive(self, watcher: asyncio.Future[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] == "http.disconnect":
            self.lost()

    def lost(self) -> None:
        if not self.finished:
            self.disconnected = True
            self.task.cancel()


def _single_header(scope: Scope, name: bytes) -> str | None:
    """A request header's value; None when absent, "" when sent more than once."""
    values = [v for k, v in scope.get("headers", ()) if k == name]
    if len(values) != 1:
        return None if not values else ""
    return bytes(values[0]).decode("latin-1")


def _path_model(path: str) -> str | None:
    return path.removeprefix("/v1/models/") if path.startswith("/v1/models/") else None


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
