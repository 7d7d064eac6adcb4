"""The load balancer in front of an app with several replicas, as the platform's ingress.

It listens on the app's port, so ``status.url`` stays the same whatever the replica count.
It works per request (layer 7), not per connection: each request goes to the next ready
replica in turn, so two requests on one keep-alive connection reach two replicas. Nothing
is sticky, which is what a client of a real multi-replica app meets: a model one replica
loaded, a lease one replica granted, is not on the next one.

Only replicas whose readiness probe passes get traffic; with none, 503 as an ingress
answers. A replica that refuses the connection (it died since its last probe) is skipped
for the next ready one, as nothing was sent to it. Answers stream back chunk by chunk and
carry no header of the balancer's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from ondemand.asgi import BodyTooLarge, ClientDisconnected, read_body, send_text
from ondemand.sandbox.apps import cancel_once, finish
from ondemand.sandbox.runpod.forward import (
    Unreachable,
    forward,
    new_client,
    request_headers,
    target_url,
)
from ondemand.serving import bind, embedded_server

if TYPE_CHECKING:
    from ondemand.asgi import Message, Receive, Scope, Send

BODY_LIMIT = 100 * 1000 * 1000
NONE_READY = "503 Service Temporarily Unavailable: no replica of this app is ready\n"
BAD_GATEWAY = "502 Bad Gateway: the replica did not answer\n"

Targets = Callable[[], Sequence[tuple[int, int]]]
"""The ready replicas now, as ``(index, port)`` in index order."""


class Balancer:
    """An ASGI app, served by ``listen`` on the caller's event loop until ``close``."""

    def __init__(self, targets: Targets, *, grace: float = 10.0) -> None:
        self.targets = targets
        self.grace = grace
        self._last = -1
        self._client: httpx.AsyncClient | None = None
        self._server: Any = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requests: set[asyncio.Task[Any]] = set()
        """The server's tasks running this app now: ``close`` waits for every one before it
        closes the client, as a request still connecting would keep a connection the closed
        client no longer knows of."""
        self.closed = False

    @property
    def client(self) -> httpx.AsyncClient:
        if self.closed:
            # One made now would never be closed: nothing goes to a replica after ``close``.
            raise RuntimeError("the balancer is closed")
        if self._client is None:
            self._client = new_client()
        return self._client

    def listen(self, port: int) -> None:
        """Serve on 127.0.0.1:``port`` from now on; ``UsageError`` when it is taken."""
        sock = bind("127.0.0.1", port)
        server = embedded_server(self, graceful_timeout=self.grace)
        # The replica's own Date header is the one the client gets: the ingress adds none.
        server.config.date_header = False
        self._sock, self._server = sock, server
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(
            server.serve(sockets=[sock]), name=f"ovh-balancer-{port}"
        )

    async def close(self) -> None:
        """Stop listening; requests in flight get ``grace`` seconds to finish.

        Cancelled meanwhile (the sandbox shutting down cuts an app's stop short), it ends
        them at once instead, and still releases everything before the cancellation goes
        on: nothing of the balancer (its listener, its connections either way, its client)
        outlives ``close``. Calling it again is harmless."""
        self._stop_listening()
        try:
            if self._task is not None:
                # Shielded: cancelling ``close`` must not cancel the server in the middle of
                # its shutdown, which would leave its connections open for good.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._task)
        except asyncio.CancelledError:
            self._hurry()
            raise
        finally:
            await self._release()

    async def abort(self) -> None:
        """``close`` without the grace: requests in flight end now."""
        self._stop_listening()
        self._hurry()
        await self._release()

    def kill(self) -> None:
        """The blocking twin of ``close``, from any thread: with its event loop still
        running, ``abort`` is started on it (only the loop can close what it opened); with
        the loop gone, the listener is all that is left to close."""
        loop = self._loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            aborting = self.abort()
            try:
                asyncio.run_coroutine_threadsafe(aborting, loop)
                return
            except RuntimeError:  # the loop closed meanwhile
                aborting.close()
        self._stop_listening()
        if self._task is not None:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                self._task.cancel()
        self._close_socket()

    def _stop_listening(self) -> None:
        self.closed = True
        if self._server is not None:
            self._server.should_exit = True

    def _hurry(self) -> None:
        """End the requests in flight now; the server then stops waiting for them."""
        if self._server is not None:
            self._server.force_exit = True
        cancel_once(self._requests)

    async def _release(self) -> None:
        task = self._task
        if task is not None:
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: a server that failed must not be logged twice
            self._task = None
        # Requests still running are those the server gave up on (it cancels what outlasts
        # the grace without waiting) or ``_hurry`` ended: they end before the client closes.
        while self._requests:
            await finish(self._requests)
        self._close_socket()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def pick(self, tried: set[int]) -> tuple[int, int] | None:
        """The ready replica after the one the previous request went to."""
        ready = [target for target in self.targets() if target[0] not in tried]
        if not ready:
            return None
        later = [target for target in ready if target[0] > self._last]
        chosen = later[0] if later else ready[0]
        self._last = chosen[0]
        return chosen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - uvicorn runs each request in a task
            await self._serve(scope, receive, send)
            return
        self._requests.add(task)
        try:
            await self._serve(scope, receive, send)
        finally:
            self._requests.discard(task)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, limit=BODY_LIMIT)
        except BodyTooLarge:
            await send_text(send, 413, "413 Request Entity Too Large\n")
            return
        except ClientDisconnected:
            return
        # A client that leaves before the answer starts (a model still loading) must close
        # the request to the replica too, as an ingress does; ``forward`` alone notices only
        # once the answer streams.
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def disconnected() -> Message:
            await gone.wait()
            return {"type": "http.disconnect"}

        routing = asyncio.ensure_future(self._route(scope, disconnected, send, body))
        watching = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({routing, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not routing.done():
                routing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            with contextlib.suppress(asyncio.CancelledError):
                await routing

    async def _route(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        # The raw path, so that what the client encoded (e.g. %2F in a model name) reaches
        # the replica as sent, as through an ingress.
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1")
        headers = request_headers(scope, drop=(), host=True)
        tried: set[int] = set()
        # Once closed, no replica takes traffic: as with none ready, 503.
        while not self.closed and (target := self.pick(tried)) is not None:
            index, port = target
            tried.add(index)
            try:
                await forward(
                    self.client, scope, receive, send,
                    url=target_url(port, path, scope), headers=headers, body=body,
                )  # fmt: skip
                return
            except Unreachable as exc:
                if not exc.refused:
                    await send_text(send, 502, BAD_GATEWAY)
                    return
        await send_text(send, 502 if tried else 503, BAD_GATEWAY if tried else NONE_READY)
