"""Forwarding one request to a worker or a pod, streaming the answer back chunk by chunk.

Used by RunPod's load balancer and pod proxy stand-ins, and by the OVH apps' balancer:
nothing is buffered, so an Ollama NDJSON stream reaches the client line by line as the
server writes it. A client that goes away closes the upstream response, so the server sees
the disconnect too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any
from urllib.parse import quote

import httpx

from ondemand.asgi import Headers, Receive, Scope, Send

HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip


_SAFE = "/:@!$&'()*+,;=-._~%"


class Unreachable(Exception):
    """Nothing answered at the target (refused, reset before the response started)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        """No connection was made, so nothing of the request was sent: a balancer may try
        another target with it."""


def new_client() -> httpx.AsyncClient:
    """No read timeout (a stream may be silent while a model loads); the callers bound the
    wait for the response's start themselves."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        trust_env=False,
    )


def target_url(port: int, path: str, scope: Scope) -> str:
    url = f"http://127.0.0.1:{port}{quote(path or '/', safe=_SAFE)}"
    query = scope.get("query_string", b"")
    return f"{url}?{query.decode('latin-1')}" if query else url


def request_headers(
    scope: Scope, drop: Iterable[bytes], *, host: bool = False
) -> list[tuple[str, str]]:
    """The client's headers to send on, without the hop-by-hop ones. ``Host`` becomes the
    target's own unless ``host``: an ingress passes the client's on, as the app's URL."""
    dropped = HOP_BY_HOP | {b"content-length", *drop}
    if not host:
        dropped |= {b"host"}
    return [
        (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
        for k, v in scope.get("headers", ())
        if bytes(k).lower() not in dropped
    ]


async def forward(
    client: httpx.AsyncClient,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes,
    extra: Iterable[tuple[bytes, bytes]] = (),
    start_timeout: float | None = None,
) -> int:
    """Send the request to ``url`` and stream the answer to the client; the status.

    Raises ``Unreachable`` when nothing answered and ``TimeoutError`` when the response did
    not start within ``start_timeout`` seconds (nothing has been sent to the client then).
    """
    request = client.build_request(scope["method"], url, headers=headers, content=body)
    try:
        async with asyncio.timeout(start_timeout):
            response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        refused = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        raise Unreachable(f"{type(exc).__name__}: {exc}", refused=refused) from None
    try:
        out: Headers = [
            (key.lower(), value)
            for key, value in response.headers.raw
            if key.lower() not in HOP_BY_HOP
        ]
        out.extend(extra)
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})

        async def pump() -> None:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        await _unless_disconnected(pump(), receive)
    finally:
        await response.aclose()
    return response.status_code


async def _unless_disconnected(work: Coroutine[Any, Any, None], receive: Receive) -> None:
    """Run ``work`` until it ends or the client disconnects (the body was read already,
    so the next message is the disconnect)."""
    pumping = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watching = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not pumping.done():
            pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    with contextlib.suppress(asyncio.CancelledError):
        await pumping
