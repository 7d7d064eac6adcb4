"""An upstream that records what the proxy sent it, with streams it can pace and break."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from ondemand.asgi import Receive, Scope, Send, read_body, send_json


@dataclass
class Seen:
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Recorder:
    """ASGI app. ``/stream?n=5&gap=0.05`` streams n NDJSON lines; ``&break=2`` dies after 2."""

    seen: list[Seen] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        self.seen.append(
            Seen(
                scope["method"],
                scope["path"],
                scope.get("raw_path") or b"",
                scope.get("query_string", b""),
                list(scope["headers"]),
                body,
                scope.get("client"),
            )
        )
        params = dict(
            p.split("=", 1) for p in scope.get("query_string", b"").decode().split("&") if "=" in p
        )
        if scope["path"] in ("/api/chat", "/v1/chat/completions") and "n" in params:
            await self._stream(receive, send, params, sse=scope["path"].startswith("/v1"))
            return
        status = int(params.get("status", "200"))
        await send_json(send, status, {"ok": True, "path": scope["path"]})

    async def _stream(
        self, receive: Receive, send: Send, params: dict[str, str], *, sse: bool
    ) -> None:
        n, gap = int(params["n"]), float(params.get("gap", "0"))
        broken_after = int(params["break"]) if "break" in params else None
        content_type = b"text/event-stream" if sse else b"application/x-ndjson"
        watcher = asyncio.ensure_future(self._watch(receive))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        try:
            for i in range(n):
                if broken_after is not None and i == broken_after:
                    raise RuntimeError("upstream dies mid-stream")
                item = json.dumps({"i": i, "done": i == n - 1}).encode()
                line = b"data: " + item + b"\n\n" if sse else item + b"\n"
                self.sent_at.append(time.monotonic())
                await send({"type": "http.response.body", "body": line, "more_body": True})
                if watcher.done():
                    return
                await asyncio.sleep(gap)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnects.append(time.monotonic())
