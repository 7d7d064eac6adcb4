"""The connection to Ollama on asyncio protocols and httptools' response parser.

A proxy hop needs little of a general HTTP client: one origin, no redirects, cookies,
proxies or decompression. What it does need is cheap per request, since on small requests
the hop is most of the proxy's work (docs/benchmarks.md, "Upstream client"). The parsing is
llhttp's, through httptools; this module only frames requests and manages connections.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

from ondemand.proxy.upstream import UpstreamBroken, UpstreamUnavailable

IDLE_SECONDS = 30.0  # a kept-alive connection unused this long is closed
# Body bytes held for a consumer that falls behind before reading from Ollama pauses.
HIGH_WATER = 64 * 1024  # as aiohttp (its read_bufsize), the client this replaced
# Methods that carry no Content-Length when empty (as HTTP clients commonly do).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
# Bodies up to this size go out in the same write as the head.
_ONE_WRITE = 64 * 1024
# Only these may be sent again on a fresh connection when a kept-alive one turns out dead.
_RETRYABLE = frozenset({"GET", "HEAD"})
# The framing is ours to write; a caller's copy of these could contradict it.
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding"})


class _StaleConnection(UpstreamUnavailable):
    """A kept-alive connection died before any byte of the answer: Ollama may never have
    seen the request (it closed the connection as we reused it)."""


class HttpUpstream:
    """A pooled HTTP/1.1 client for one Ollama base URL, created in the serving event loop.

    No limit on connections (the proxy's own limits apply), no read timeout (a model load
    can hold the first byte back for minutes).
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        peer: str = "Ollama",
        unix_socket: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.peer = peer  # who answers, as errors name it
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        default_port = 443 if parts.scheme == "https" else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        name = f"[{self._host}]" if ":" in self._host else self._host
        self._where = f"{name}:{self._port}"
        host = name if self._port == default_port else self._where
        self._host_line = b"Host: " + _ascii_host(host) + b"\r\n"
        self._prefix = parts.path.encode("latin-1")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._unix = unix_socket  # connect there; the URL still names the Host
        if unix_socket is not None:
            self._where = unix_socket
        self._idle: list[_Connection] = []  # most recently used last: it is the likeliest alive
        self._open: set[_Connection] = set()

    async def send(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> _Response:
        head = self._request_head(method, path, query, headers, body)
        may_retry = method in _RETRYABLE and isinstance(body, bytes)
        conn = self._pooled()
        while True:
            if conn is None:
                conn = await self._connect()
            try:
                return await conn.request(head, body, head_only=method == "HEAD")
            except _StaleConnection:
                if not may_retry:
                    raise
                may_retry, conn = False, None  # once, and on a fresh connection

    async def get_status(self, path: str, limit_seconds: float) -> int:
        """Status of a small GET, for health checks; raises UpstreamUnavailable."""
        try:
            async with asyncio.timeout(limit_seconds):
                response = await self.send("GET", path, b"", [], b"")
                try:
                    async for _ in response.chunks():
                        pass
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamUnavailable(f"no answer within {limit_seconds:g} s") from None
        except UpstreamBroken as exc:
            raise UpstreamUnavailable(str(exc)) from None
        return response.status

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    # -- connections --------------------------------------------------------------------

    def _pooled(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.take()
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._unix is not None:
                    transport, conn = await loop.create_unix_connection(
                        lambda: _Connection(self), self._unix
                    )
                else:
                    transport, conn = await loop.create_connection(
                        lambda: _Connection(self),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
        except TimeoutError:
            raise UpstreamUnavailable(f"timed out connecting to {self._where}") from None
        except OSError as exc:  # refused, unreachable, unknown name, TLS failure
            raise UpstreamUnavailable(f"cannot connect to {self._where}: {exc}") from None
        # uvloop may run connection_made only after create_connection has returned.
        conn.transport = transport
        self._open.add(conn)
        return conn

    def _request_head(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> bytes:
        target = self._prefix + path.encode("latin-1")
        if query:
            target += b"?" + query
        parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n", self._host_line]
        lines = 2
        for name, value in headers:
            if name.lower() not in _FRAMING:
                parts += (name, b": ", value, b"\r\n")
                lines += 1
        if not isinstance(body, bytes):
            parts.append(b"Transfer-Encoding: chunked\r\n")
            lines += 1
        elif body or method not in _BODILESS:
            parts.append(b"Content-Length: %d\r\n" % len(body))
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # The server parsed what we were given; this guards the framing against a caller
        # that passes a line break inside a target or a header (request smuggling).
        if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1:
            raise UpstreamUnavailable("refused to send a request head with a stray line break")
        return head


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to Ollama, carrying one request at a time."""

    def __init__(self, pool: HttpUpstream) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self.closed = False
        self.reused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading = True

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes nobody asked for: the connection's framing cannot be trusted any more.
            self.close()
            return
        response.received = True
        parser = response.parser
        if parser is None:  # settled already: nothing more can belong to it
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response.fail(f"{self.pool.peer} switched protocols")
            self.close()
        except httptools.HttpParserError as exc:
            response.fail(f"invalid response from {self.pool.peer}: {exc}")
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.pool._forget(self)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError(f"{self.pool.peer} closed the connection"))
        response, self.response = self.response, None
        if response is not None:
            response.lost(exc)

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the pool's side ----------------------------------------------------------------

    def usable(self) -> bool:
        # A connection Ollama closed while idle has already seen connection_lost (the loop
        # ran since), or at least shows a closing transport.
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def take(self) -> None:
        self.reused = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def finished(self, keep_alive: bool) -> None:
        self.response = None
        if not keep_alive or self.closed:
            self.close()
            return
        self.resume()
        self._idle_timer = asyncio.get_running_loop().call_later(IDLE_SECONDS, self.close)
        self.pool._release(self)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def pause(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self._reading and self.transport is not None and not self.transport.is_closing():
            self._reading = True
            self.transport.resume_reading()

    # -- one exchange -------------------------------------------------------------------

    async def request(
        self, head: bytes, body: bytes | AsyncIterator[bytes], *, head_only: bool
    ) -> _Response:
        assert self.transport is not None
        response = self.response = _Response(self, head_only=head_only)
        try:
            if isinstance(body, bytes):
                if len(body) <= _ONE_WRITE:
                    self.transport.write(head + body)  # one write, one syscall
                else:  # no copy of a large body (a blob upload) just to save a syscall
                    self.transport.write(head)
                    self.transport.write(body)
                await response.head
            else:
                self.transport.write(head)
                writer = response.writer = asyncio.ensure_future(self._write_chunked(body))
                writer.add_done_callback(self._writer_done)
                await asyncio.wait((response.head, writer), return_when=asyncio.FIRST_COMPLETED)
                if writer.done() and not writer.cancelled():
                    failure = writer.exception()
                    if failure is not None and not isinstance(failure, OSError):
                        raise failure  # the body's own source failed (the client went away)
                await response.head
        except BaseException:
            response.abandon()
            raise
        return response

    async def _write_chunked(self, body: AsyncIterator[bytes]) -> None:
        assert self.transport is not None
        async for chunk in body:
            if self.closed:
                raise ConnectionResetError(f"{self.pool.peer} closed the connection")
            if chunk:
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if self._drain is not None:
                    await self._drain
        if not self.closed:
            self.transport.write(b"0\r\n\r\n")

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        # A body that could not be sent whole leaves the request unfinished: drop the
        # connection, so Ollama does not wait for the rest.
        if writer.cancelled() or writer.exception() is not None:
            self.close()


class _Response:
    """Status, headers and the body as it arrives; also the parser's callbacks."""

    __slots__ = ("_buffer", "_conn", "_done", "_error", "_head_only", "_peer", "_reused", "_size",
                 "_until_close", "_waiter", "head", "headers", "parser", "received", "status",
                 "writer")  # fmt: skip

    def __init__(self, conn: _Connection, *, head_only: bool) -> None:
        self._conn: _Connection | None = conn
        self._peer = conn.pool.peer
        # A parser per response: after a HEAD answer, one would still expect the body that
        # Content-Length announced. It holds this response's methods, and this response
        # holds it: let go once settled, both are freed at once, not by the collector.
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._reused = conn.reused
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = False
        self.writer: asyncio.Task[None] | None = None
        self._buffer: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: UpstreamBroken | None = None
        self._until_close = False
        self._waiter: asyncio.Future[None] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamBroken if the response ends abnormally."""
        buffer = self._buffer
        while True:
            if buffer:
                data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
                buffer.clear()
                self._size = 0
                if self._conn is not None:
                    self._conn.resume()
                yield data
            elif self._error is not None:
                raise self._error
            elif self._done:
                return
            else:
                waiter = self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None

    async def aclose(self) -> None:
        """Release the response; an unfinished one drops its connection, which is how
        Ollama learns that the client went away and stops generating."""
        self._drop()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head.done():
            raise _SecondMessage  # more than the one answer we asked for

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head.done():  # trailers (RFC 9112 §7.1.2) are not forwarded
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None  # called by it
        status = self.parser.get_status_code()
        if status < 200:
            self.headers = []  # an interim answer (103 Early Hints): the real one follows
            return
        self.status = status
        framed = False
        for name, value in self.headers:
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                framed = True
        # How the body ends: RFC 9112 §6.3 (no length and no chunking: at the close).
        self._until_close = not (framed or self._head_only or status in (204, 304))
        if not self.head.done():
            self.head.set_result(None)
        if self._head_only:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._done:
            raise _SecondMessage  # a body after a HEAD answer
        self._buffer.append(body)
        self._size += len(body)
        conn = self._conn
        if self._size > HIGH_WATER and conn is not None:
            conn.pause()  # the client is slower than Ollama: stop reading until it catches up
        self._wake()

    def on_message_complete(self) -> None:
        if self.head.done() and not self._done:  # not the end of an interim answer
            self._finish()

    # -- the connection's side ----------------------------------------------------------

    def _finish(self) -> None:
        self._done = True
        self._wake()
        parser, self.parser = self.parser, None
        conn, self._conn = self._conn, None
        if conn is not None:
            writing = self.writer is not None and not self.writer.done()
            kept = parser is not None and parser.should_keep_alive()
            conn.finished(keep_alive=kept and not writing)

    def lost(self, exc: Exception | None) -> None:
        self._conn = None
        self.parser = None
        if not self.head.done():
            message = f"{self._peer} closed the connection before answering"
            if exc is not None:
                message = f"connection to {self._peer} lost: {exc}"
            stale = self._reused and not self.received
            self.head.set_exception((_StaleConnection if stale else UpstreamUnavailable)(message))
        elif not self._done:
            if self._until_close and exc is None:
                self._done = True  # the body was framed by the close itself
                self._wake()
            else:
                self.fail(f"{self._peer} closed the connection mid-response")

    def fail(self, message: str) -> None:
        if not self.head.done():
            self.head.set_exception(UpstreamUnavailable(message))
        elif not self._done and self._error is None:
            self._error = UpstreamBroken(message)
            self._wake()

    def abandon(self) -> None:
        """send() gave up (cancelled, or the body's source failed) before the head came."""
        self.head.cancel()
        self._drop()

    def _drop(self) -> None:
        """Close the connection unless it was handed back finished, and stop sending."""
        conn, self._conn = self._conn, None
        self.parser = None
        if conn is not None:
            conn.response = None
            conn.close()
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _ascii_host(host: str) -> bytes:
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")  # an internationalised name, as DNS knows it


class _SecondMessage(Exception):
    """Ollama sent more than the one answer asked for."""
