"""A loopback HTTP/1.1 server in the test's own event loop, whose connections follow a script.

For the upstream client's edge cases: each accepted connection runs ``script(conn)``, which
reads requests and writes whatever bytes the case needs (bad framing, resets, closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    target: str
    head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    first_read: bytes  # what the first read returned: the head and body sent in one write

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Conn:
    """One accepted connection, as a script sees it."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: Scripted

    async def request(self) -> Request | None:
        """The next request; None if the client closed the connection instead."""
        try:
            first = await self.reader.read(65536)
        except ConnectionError:
            return None
        if not first:
            return None
        buffer = first
        while b"\r\n\r\n" not in buffer:
            more = await self.reader.read(65536)
            if not more:
                raise AssertionError(f"the client closed mid-head: {buffer!r}")
            buffer += more
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, _version = lines[0].decode("latin-1").split(" ")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        names = dict(headers)
        if names.get(b"transfer-encoding") == b"chunked":
            body, rest = await self._chunked(rest)
        else:
            size = int(names.get(b"content-length", b"0"))
            while len(rest) < size:
                rest += await self.reader.readexactly(size - len(rest))
            body = rest[:size]
        request = Request(method, target, head, headers, body, first)
        self.server.requests.append((self.number, request))
        return request

    async def _chunked(self, rest: bytes) -> tuple[bytes, bytes]:
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += await self.reader.read(65536)
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += await self.reader.read(65536)
            if size == 0:
                return body, rest[2:]
            body += rest[:size]
            rest = rest[size + 2 :]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a crashed server's kernel would."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def closed_by_client(self) -> bool:
        """Wait for the client's end of the connection: True once it closed."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        return True


Script = Callable[[Conn], Awaitable[None]]


@dataclass
class Scripted:
    script: Script
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[tuple[int, Request]] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)  # connections whose script has returned
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    url: str = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = Conn(self.connections, reader, writer, self)
        self._writers.append(writer)
        try:
            await self.script(conn)
        finally:
            self.ended.append(conn.number)
            writer.close()

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            if not writer.transport.is_closing():
                writer.transport.abort()


async def answer_forever(conn: Conn, response: bytes) -> None:
    """Keep-alive: the same response to every request until the client closes."""
    while await conn.request() is not None:
        await conn.send(response)


def ok(body: bytes = b'{"ok":true}', status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        status,
        len(body),
        body,
    )


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for ``condition`` (checked every few ms: it is the state of sockets and of the
    client, which signal nothing), or fail."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
