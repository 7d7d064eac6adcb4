"""Response encodings Ollama uses: compact UTF-8 JSON, NDJSON and SSE streams, error bodies."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ondemand.asgi import JSON_TYPE, send_bytes

if TYPE_CHECKING:
    from ondemand.asgi import Send
    from ondemand.sandbox.ollama.config import Fault
    from ondemand.sandbox.ollama.watch import Watch

NDJSON_TYPE = b"application/x-ndjson"
SSE_TYPE = b"text/event-stream"


def dumps(payload: object) -> bytes:
    """Go's json.Marshal layout: no spaces, UTF-8 left as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


async def send_json(send: Send, status: int, payload: object) -> None:
    await send_bytes(send, status, dumps(payload), JSON_TYPE)


def openai_error(status: int, message: str) -> dict[str, Any]:
    if status == 400:
        kind = "invalid_request_error"
    elif status == 404:
        kind = "not_found_error"
    else:
        kind = "api_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def send_error(send: Send, status: int, message: str, *, openai: bool = False) -> None:
    payload = openai_error(status, message) if openai else {"error": message}
    await send_json(send, status, payload)


class Stream:
    """A streamed 200 answer whose headers go out with the first line, as Go's writer does."""

    __slots__ = ("content_type", "started", "watch")

    def __init__(self, watch: Watch, content_type: bytes) -> None:
        self.watch = watch
        self.content_type = content_type
        self.started = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await self.watch.send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", self.content_type)],
                }
            )

    async def line(self, body: bytes) -> None:
        await self.start()
        await self.watch.line(body)

    async def end(self, body: bytes) -> None:
        """The last line; the response is complete after it."""
        await self.start()
        self.watch.finishing()
        await self.watch.send({"type": "http.response.body", "body": body, "more_body": False})

    async def cut(self) -> None:
        """Stop without a final chunk: the server then drops the connection mid-body."""
        await self.start()
        self.watch.finishing()


async def cut_json(watch: Watch, body_size: int) -> None:
    """A non-streamed answer whose connection drops before any of its body arrives."""
    watch.finishing()
    await watch.send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", JSON_TYPE),
                (b"content-length", str(max(body_size, 1)).encode()),
            ],
        }
    )


async def finish_json(
    watch: Watch, fault: Fault | None, payload: object, *, openai: bool = False
) -> None:
    """Send a non-streamed answer, unless a fault says to drop or fail it instead."""
    if fault is not None and fault.close_after_lines is not None:
        await cut_json(watch, len(dumps(payload)))
        return
    watch.finishing()
    if fault is not None and fault.error_after_lines is not None:
        status = fault.status if fault.status >= 400 else 500
        await send_error(watch.send, status, fault.message, openai=openai)
        return
    await send_json(watch.send, 200, payload)
