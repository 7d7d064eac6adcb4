"""The proxy's upstream client written on httpx, kept only to compare against aiohttp."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from ondemand.proxy.upstream import UpstreamBroken, UpstreamUnavailable


class HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = [(k.lower(), v) for k, v in response.headers.raw]
        self._response = response

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamBroken(str(exc)) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    def __init__(self, base_url: str, *, connect_timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(None, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
            trust_env=False,
        )

    async def send(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> HttpxResponse:
        url = path + ("?" + query.decode("latin-1") if query else "")
        request = self._client.build_request(method, url, headers=headers, content=body or None)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(str(exc)) from exc
        return HttpxResponse(response)

    async def get_status(self, path: str, limit_seconds: float) -> int:
        try:
            response = await self._client.get(path, timeout=limit_seconds)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(str(exc)) from exc
        return response.status_code

    async def aclose(self) -> None:
        await self._client.aclose()
