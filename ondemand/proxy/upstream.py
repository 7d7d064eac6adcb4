"""What the proxy needs from its HTTP client to Ollama: streamed responses, typed failures,
and which headers cross the hop. The client itself: upstream_http.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

# Headers that describe one hop, not the message (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Also never sent to Ollama: the caller's credentials (the key is ours), browser context
# (Ollama answers 403 to an Origin it does not know), and what the client library recomputes.
DROP_REQUEST = HOP_BY_HOP | {
    b"host", b"content-length", b"authorization", b"x-api-key", b"cookie", b"origin", b"expect",
}  # fmt: skip
DROP_RESPONSE = HOP_BY_HOP | {b"server", b"date"}


class UpstreamUnavailable(Exception):
    """Ollama could not be reached, or failed before it sent a response."""


class UpstreamBroken(Exception):
    """Ollama's response ended abnormally after it had started."""


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def request_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    extra = _connection_tokens(headers)
    return [(n, v) for n, v in headers if n not in DROP_REQUEST and n not in extra]


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    extra = _connection_tokens(headers)
    return [(n, v) for n, v in headers if n not in DROP_RESPONSE and n not in extra]


class StreamedResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamBroken if the response ends abnormally."""
        ...

    async def aclose(self) -> None:
        """Release the response; an unfinished one drops its connection."""
        ...


class UpstreamClient(Protocol):
    """What the proxy needs from an HTTP client (measured alternatives: docs/benchmarks.md)."""

    async def send(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> StreamedResponse: ...

    async def get_status(self, path: str, limit_seconds: float) -> int: ...

    async def aclose(self) -> None: ...
