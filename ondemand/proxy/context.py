"""One request's bookkeeping: its id, what the answer was, when it started, the log line.

Every response carries ``X-Request-Id`` (the client's, when it sent a sane one), and so
does the request sent to Ollama, so one id ties the client's report, this log and
Ollama's log together.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field

from ondemand.asgi import Headers, Message, Scope, Send, header

access_log = logging.getLogger("ondemand.proxy.access")
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_CORS_ALLOW_HEADERS = b"Authorization, Content-Type, X-API-Key, X-Request-Id"
_CORS_EXPOSE = b"X-Request-Id, Retry-After"


@dataclass(slots=True)
class RequestContext:
    method: str
    path: str  # the client's, decoded; log it with %r
    request_id: str
    cors_origin: bytes | None = None
    started: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    status: int | None = None
    first_byte: float | None = None
    key_name: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    detail: str | None = None  # why the proxy itself answered, e.g. "credentials invalid"
    quiet: bool = False  # /ping: probes every few seconds are not worth a line each
    # The server's own send, under what ``wrap`` returns: once the response has started
    # and its first body bytes are out, a stream's later chunks need no wrapper.
    unwrapped: Send | None = None

    @classmethod
    def of(cls, scope: Scope, cors: frozenset[str]) -> RequestContext:
        given = header(scope, b"x-request-id")
        request_id = given.decode() if given and _SANE_ID.match(given) else secrets.token_hex(8)
        origin = header(scope, b"origin")
        allowed = origin is not None and ("*" in cors or origin.decode("latin-1") in cors)
        return cls(scope["method"], scope["path"], request_id, origin if allowed else None)

    def cors_headers(self) -> Headers:
        if self.cors_origin is None:
            return []
        return [
            (b"access-control-allow-origin", self.cors_origin),
            (b"access-control-expose-headers", _CORS_EXPOSE),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self) -> Headers:
        """What a preflight adds to the CORS headers every response of ``wrap`` carries."""
        return [
            (b"access-control-allow-methods", b"GET, POST, DELETE, HEAD, OPTIONS"),
            (b"access-control-allow-headers", _CORS_ALLOW_HEADERS),
            (b"access-control-max-age", b"600"),
        ]

    def wrap(self, send: Send) -> Send:
        """``send`` that stamps the response with its id (and CORS) and notes what went out."""
        extra: Headers = [(b"x-request-id", self.request_id.encode()), *self.cors_headers()]
        self.unwrapped = send

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            elif self.first_byte is None and message.get("body"):
                self.first_byte = time.perf_counter()
            await send(message)

        return wrapped

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_byte is None else (self.first_byte - self.started) * 1000

    def log(self) -> None:
        level = logging.DEBUG if self.quiet else logging.INFO
        if not access_log.isEnabledFor(level):
            return  # nothing to build: a silenced log costs a request nothing
        status = self.status if self.status is not None else 499
        duration, ttft = self.duration_ms, self.ttft_ms
        tokens = (
            f" tokens={self.prompt_tokens or 0}/{self.completion_tokens or 0}"
            if self.prompt_tokens is not None or self.completion_tokens is not None
            else ""
        )
        access_log.log(
            level,
            "%s %r %d key=%s model=%s %.0fms%s%s id=%s%s",
            self.method, self.path, status, self.key_name or "-", self.model or "-", duration,
            f" ttft={ttft:.0f}ms" if ttft is not None else "", tokens, self.request_id,
            f" ({self.detail})" if self.detail else "",
            extra={
                "request_id": self.request_id, "method": self.method, "path": self.path,
                "status": status, "key": self.key_name, "model": self.model,
                "duration_ms": round(duration, 3),
                "ttft_ms": None if ttft is None else round(ttft, 3),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "detail": self.detail,
            },
        )  # fmt: skip
