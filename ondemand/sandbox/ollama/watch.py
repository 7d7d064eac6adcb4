"""Client-disconnect detection for one long request, and pacing that a disconnect interrupts.

Ollama cancels a request when its client goes away (ollama/ollama#2876). Here, once the body
is read, a task waits on ``receive()``; ``http.disconnect`` (or an error from ``send``) marks
the request cancelled, records the event at once, and wakes whatever the request is waiting
for, so generation stops within a loop iteration instead of at the next token.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

from ondemand.asgi import ClientDisconnected

if TYPE_CHECKING:
    from ondemand.asgi import Message, Receive, Send
    from ondemand.sandbox.ollama.stats import Stats

T = TypeVar("T")


class Disconnected(Exception):
    """The client went away; the request should stop quietly."""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Watch:
    """Tracks one generation or pull: progress, disconnect, and the stats that go with it."""

    __slots__ = (
        "_loop",
        "_receive",
        "_send",
        "_wake",
        "_watcher",
        "closed",
        "done",
        "fired",
        "model",
        "phase",
        "route",
        "sent",
        "stats",
    )

    def __init__(self, receive: Receive, send: Send, stats: Stats, route: str, model: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._receive = receive
        self._send = send
        self._wake: asyncio.Future[None] | None = None
        self.stats = stats
        self.route = route
        self.model = model
        self.phase = "load"
        self.sent = 0
        self.fired = False
        self.done = False
        self.closed = False
        stats.active += 1
        self._watcher = self._watch()

    def _watch(self) -> asyncio.Future[Message]:
        watcher = asyncio.ensure_future(self._receive())
        watcher.add_done_callback(self._on_receive)
        return watcher

    def _on_receive(self, watcher: asyncio.Future[Message]) -> None:
        if self.done or watcher.cancelled():
            return
        if watcher.exception() is None and watcher.result().get("type") != "http.disconnect":
            self._watcher = self._watch()
            return
        self._fire()

    def _fire(self) -> None:
        if self.fired or self.done:
            return
        self.fired = True
        self.stats.cancelled += 1
        self.stats.event(
            "cancel", route=self.route, model=self.model, tokens_sent=self.sent, phase=self.phase
        )
        if self._wake is not None:
            _resolve(self._wake)

    async def send(self, message: Message) -> None:
        if self.fired:
            raise Disconnected
        try:
            await self._send(message)
        except (OSError, ClientDisconnected):
            self._fire()
            raise Disconnected from None

    async def line(self, body: bytes) -> None:
        """One streamed line (or SSE event) as its own body message."""
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (loop time); always yields so other streams and the
        disconnect watcher run even when nothing is paced."""
        if self.fired:
            raise Disconnected
        if deadline <= self._loop.time():
            await asyncio.sleep(0)
        else:
            wake: asyncio.Future[None] = self._loop.create_future()
            self._wake = wake
            handle = self._loop.call_at(deadline, _resolve, wake)
            try:
                await wake
            finally:
                handle.cancel()
                self._wake = None
        if self.fired:
            raise Disconnected

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._loop.time() + max(0.0, seconds))

    async def wait(self, task: asyncio.Future[T]) -> T:
        """Wait for a shared ``task`` (a model load) without cancelling it on disconnect."""
        if self.fired:
            raise Disconnected
        wake: asyncio.Future[None] = self._loop.create_future()
        self._wake = wake
        try:
            waiting: set[asyncio.Future[Any]] = {task, wake}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake = None
            _resolve(wake)
        if self.fired:
            raise Disconnected
        return task.result()

    async def close(self, *, completed: bool) -> None:
        """Stop watching; ``completed`` when the full answer was sent."""
        if self.closed:
            return
        self.closed = self.done = True
        self.stats.active -= 1
        if completed and not self.fired:
            self.stats.completed += 1
        watcher = self._watcher
        if not watcher.done():
            watcher.cancel()
            # asyncio.wait does not re-raise the watcher's cancellation, only our own.
            await asyncio.wait({watcher})

    def finishing(self) -> None:
        """Called before the last message: completing the response makes ``receive()``
        report a disconnect, which must not count as a cancel."""
        self.done = True
