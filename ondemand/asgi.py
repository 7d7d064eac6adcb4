"""Small ASGI vocabulary shared by the proxy and the emulators: types and plain responses.

No framework: the proxy and the emulators are pure ASGI callables, so a response is a
``http.response.start`` message followed by ``http.response.body`` messages.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
H = TypeVar("H")

# The ASGI extension the front door (frontdoor.py) adds to ``scope["extensions"]``.
# ON_DISCONNECT takes a callback (None withdraws it) to call once if the client goes away
# before the response is complete: cheaper than a task parked on ``receive()`` for every
# request. BODY_GRACE: the seconds after which the server itself answers 408 to a request
# body that has stopped coming (a little more once some of it came).
FRONT_DOOR = "ondemand.front_door"
ON_DISCONNECT = "on_disconnect"
BODY_GRACE = "body_grace"

JSON_TYPE = b"application/json; charset=utf-8"
# One encoder for every compact body: json.dumps with separators builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def compact_json(value: object) -> bytes:
    """``value`` as JSON without spaces, UTF-8 with non-ASCII escaped, as json.dumps does."""
    return _COMPACT.encode(value).encode()


TEXT_TYPE = b"text/plain; charset=utf-8"


class BodyTooLarge(Exception):
    """The request body passed the configured limit."""


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete, non-streamed response."""
    out: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: object, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = compact_json(payload)
    await send_bytes(send, status, body, JSON_TYPE, headers)


async def send_text(
    send: Send, status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, text.encode(), TEXT_TYPE, headers)


async def read_body(
    receive: Receive, limit: int | None = None, idle_timeout: float | None = None
) -> bytes:
    """Read the whole request body.

    Raises ``BodyTooLarge`` past ``limit`` bytes, ``TimeoutError`` when the client sends
    nothing for ``idle_timeout`` seconds, ``ClientDisconnected`` when it goes away.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        if idle_timeout is None:
            message = await receive()
        else:
            async with asyncio.timeout(idle_timeout):
                message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if limit is not None and size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` lower-case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def serve_lifespan(
    receive: Receive,
    send: Send,
    startup: Callable[[], object] | None = None,
    shutdown: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Answer the ASGI lifespan protocol, calling ``startup`` and awaiting ``shutdown``."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if startup is not None:
                startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if shutdown is not None:
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def match_route(
    routes: Iterable[tuple[re.Pattern[str], dict[str, H]]], path: str
) -> tuple[dict[str, H] | None, dict[str, str]]:
    """The handlers by method of the first route whose pattern matches all of ``path``, and
    the pattern's named groups; ``(None, {})`` when none does."""
    for pattern, methods in routes:
        found = pattern.fullmatch(path)
        if found is not None:
            return methods, found.groupdict()
    return None, {}
