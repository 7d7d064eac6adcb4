"""The proxy's upstream client written on aiohttp, the shipped one until the leaner client in
ondemand/proxy/upstream_http.py replaced it; kept only to compare against it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from ondemand.proxy.upstream import UpstreamBroken, UpstreamUnavailable


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamBroken(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        # Closing (not releasing) an unfinished response drops its connection, which is
        # how Ollama learns that the client went away and stops generating.
        self._response.close()


class AiohttpUpstream:
    """A pooled client for one Ollama base URL, created in the serving event loop."""

    def __init__(self, base_url: str, *, connect_timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,  # the proxy's own limits apply; never queue inside the client
                keepalive_timeout=30,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # No read timeout: a model load can hold the first byte back for minutes.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self._connect_timeout, sock_read=None
                ),
                auto_decompress=False,
                # Ollama sets no cookies; the jar would only cost time on every request.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Forward exactly what the client sent; aiohttp would otherwise invent a
                # Content-Type and an Accept-Encoding the client never asked for.
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                trust_env=False,
            )
        return self._session

    async def send(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> UpstreamResponse:
        url = URL(
            self.base_url + path + ("?" + query.decode("latin-1") if query else ""), encoded=True
        )
        out_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        try:
            response = await self._get_session().request(
                method,
                url,
                headers=out_headers,
                # An empty body goes as no body, so a GET stays a GET without Content-Length.
                data=body or None,
                allow_redirects=False,
                compress=None,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        raw = [(bytes(n).lower(), bytes(v)) for n, v in response.raw_headers]
        return UpstreamResponse(response.status, raw, response)

    async def get_status(self, path: str, limit_seconds: float) -> int:
        """Status of a small GET, for health checks; raises UpstreamUnavailable."""
        try:
            async with self._get_session().get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=limit_seconds)
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
