"""The proxy's upstream client over real loopback: the Ollama emulator for ordinary traffic,
scripted servers for the edge cases (framing, resets, closes, flow control, retries).

Each test runs on asyncio's own loop and on uvloop (which the proxy serves with).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ondemand.proxy import upstream_http
from ondemand.proxy.upstream import UpstreamBroken, UpstreamUnavailable
from ondemand.proxy.upstream_http import HIGH_WATER, HttpUpstream
from ondemand.sandbox.ollama import EmulatorConfig
from ondemand.sandbox.ollama import create_app as create_emulator
from ondemand.sandbox.ollama.app import Emulator
from ondemand.serving import BackgroundServer
from tests.conftest import FAST_EMULATOR
from tests.proxy.scripted import Conn, Scripted, answer_forever, collect, ok, until

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": request.param == "uvloop"})


@contextlib.asynccontextmanager
async def _client(base_url: str, *, connect_timeout: float = 10.0) -> AsyncIterator[HttpUpstream]:
    """A client for ``base_url``, closed with all its connections at the end of the block."""
    client = HttpUpstream(base_url, connect_timeout=connect_timeout)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Emulator, BackgroundServer]]:
    env = {**FAST_EMULATOR, "OLLAMA_EMULATOR_MODELS": "llama3.2",
           "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "200",
           "OLLAMA_EMULATOR_RESPONSE_TOKENS": "20"}  # fmt: skip
    app = create_emulator(EmulatorConfig.from_env(env))
    with BackgroundServer(app) as server:
        yield app, server


# -- against the emulator ---------------------------------------------------------------


async def test_small_requests_share_one_kept_alive_connection(
    emulator: tuple[Emulator, BackgroundServer],
) -> None:
    async with _client(emulator[1].url + "/") as client:  # a trailing slash is not doubled
        for _ in range(5):
            response = await client.send("GET", "/api/tags", b"", [], b"")
            body = await collect(response.chunks())
            await response.aclose()
            assert response.status == 200
            assert [m["name"] for m in json.loads(body)["models"]] == ["llama3.2:latest"]
            assert (b"content-type", b"application/json; charset=utf-8") in response.headers
        assert len(client._open) == 1
        assert await client.get_status("/", 2.0) == 200


async def test_a_stream_arrives_line_by_line_and_whole(
    emulator: tuple[Emulator, BackgroundServer],
) -> None:
    body = json.dumps({"model": "llama3.2", "prompt": "hi"}).encode()
    async with _client(emulator[1].url) as client:
        response = await client.send(
            "POST", "/api/generate", b"", [(b"content-type", b"application/json")], body
        )
        chunks = [chunk async for chunk in response.chunks()]
        await response.aclose()
    assert response.status == 200
    assert len(chunks) > 1  # as they were written, not buffered to the end
    lines = [json.loads(line) for line in b"".join(chunks).splitlines()]
    assert lines[-1]["done"] is True
    assert sum(1 for line in lines if not line["done"]) == 20


async def test_closing_an_unfinished_stream_stops_the_generation(
    emulator: tuple[Emulator, BackgroundServer],
) -> None:
    app, server = emulator
    body = json.dumps({"model": "llama3.2", "prompt": "hi", "options": {"num_predict": 100000}})
    before = len(app.cancels())
    async with _client(server.url) as client:
        response = await client.send("POST", "/api/generate", b"", [], body.encode())
        async for _ in response.chunks():
            break
        await response.aclose()
        await until(lambda: len(app.cancels()) > before)
        assert not client._open  # the connection went with the response


# -- framing ----------------------------------------------------------------------------


async def test_the_request_is_forwarded_exactly_in_one_write() -> None:
    async with Scripted(lambda conn: answer_forever(conn, ok())) as server:
        headers = [(b"content-type", b"text/plain"), (b"x-request-id", b"r1")]
        async with _client(server.url + "/base/") as client:
            response = await client.send("POST", "/api/x%2Fy", b"a=%20&b", headers, b"hello")
            await collect(response.chunks())
            get = await client.send("GET", "/api/tags", b"", [(b"x-one", b"1")], b"")
            await collect(get.chunks())
    (_, post), (_, tags) = server.requests
    assert post.method == "POST"
    assert post.target == "/base/api/x%2Fy?a=%20&b"
    host = server.url.removeprefix("http://").encode()
    assert post.headers == [(b"host", host), *headers, (b"content-length", b"5")]
    assert post.body == b"hello"
    assert post.first_read == post.head + b"\r\n\r\n" + post.body
    # No invented User-Agent, Accept, Content-Type or Accept-Encoding; no length on a GET.
    assert tags.headers == [(b"host", host), (b"x-one", b"1")]


async def test_a_large_body_is_forwarded_whole_behind_its_head() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: written apart from the head, not copied
    async with (
        Scripted(lambda conn: answer_forever(conn, ok())) as server,
        _client(server.url) as client,
    ):
        response = await client.send("POST", "/api/blobs/sha256:1", b"", [], body)
        await collect(response.chunks())
    [(_, post)] = server.requests
    assert post.header(b"content-length") == [str(len(body)).encode()]
    assert post.body == body


async def test_a_streamed_body_goes_chunked() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"d" * 70000, b"end"):
            yield part

    async with (
        Scripted(lambda conn: answer_forever(conn, ok())) as server,
        _client(server.url) as client,
    ):
        response = await client.send("PUT", "/api/blobs/sha256:0", b"", [], parts())
        await collect(response.chunks())
    [(_, put)] = server.requests
    assert put.header(b"transfer-encoding") == [b"chunked"]
    assert put.header(b"content-length") == []
    assert put.body == b"abc" + b"d" * 70000 + b"end"


async def test_a_chunked_answer_with_extensions_and_trailers_is_dechunked() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b'6;name=value\r\n{"a"}\n\r\n'
        b'6\r\n{"b"}\n\r\n'
        b"0\r\nX-Checksum: abc\r\n\r\n"
    )
    async with (
        Scripted(lambda conn: answer_forever(conn, answer)) as server,
        _client(server.url) as client,
    ):
        for _ in range(2):  # and the connection is still good for the next request
            response = await client.send("GET", "/", b"", [], b"")
            assert await collect(response.chunks()) == b'{"a"}\n{"b"}\n'
            assert b"x-checksum" not in dict(response.headers)
    assert server.connections == 1


async def test_an_unframed_answer_is_read_until_the_close() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await conn.send(b"part two")

    async with Scripted(script) as server, _client(server.url) as client:
        response = await client.send("GET", "/", b"", [], b"")
        assert await collect(response.chunks()) == b"part one, part two"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_and_head_end_at_the_head(status: int) -> None:
    answers = {
        "HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        "GET": b"HTTP/1.1 %d X\r\n\r\n" % status,
    }

    async def script(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            await conn.send(answers.get(request.method, ok()))

    async with Scripted(script) as server, _client(server.url) as client:
        for method in ("HEAD", "GET", "POST"):
            response = await client.send(method, "/", b"", [], b"")
            assert await collect(response.chunks()) == (b'{"ok":true}' * (method == "POST"))
    assert server.connections == 1  # a HEAD's Content-Length did not swallow what followed
    assert [r.method for _, r in server.requests] == ["HEAD", "GET", "POST"]
    assert server.requests[2][1].header(b"content-length") == [b"0"]


async def test_an_interim_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok()
    async with (
        Scripted(lambda conn: answer_forever(conn, answer)) as server,
        _client(server.url) as client,
    ):
        response = await client.send("GET", "/", b"", [], b"")
        assert response.status == 200
        assert b"link" not in dict(response.headers)
        assert await collect(response.chunks()) == b'{"ok":true}'


# -- failures ---------------------------------------------------------------------------


async def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with _client(f"http://127.0.0.1:{port}", connect_timeout=2.0) as client:
        with pytest.raises(UpstreamUnavailable, match=f"cannot connect to 127.0.0.1:{port}"):
            await client.send("GET", "/api/tags", b"", [], b"")
        with pytest.raises(UpstreamUnavailable):
            await client.get_status("/", 1.0)


async def test_a_reset_mid_body_breaks_the_response() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        conn.reset()

    async with Scripted(script) as server, _client(server.url) as client:
        response = await client.send("GET", "/", b"", [], b"")
        with pytest.raises(UpstreamBroken):
            await collect(response.chunks())
        await response.aclose()


async def test_a_stream_cut_before_its_last_chunk_breaks_the_response() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")

    async with Scripted(script) as server, _client(server.url) as client:
        response = await client.send("GET", "/", b"", [], b"")
        chunks = response.chunks()
        assert await anext(chunks) == b"abc"
        with pytest.raises(UpstreamBroken):
            await anext(chunks)


async def test_a_closed_idle_connection_is_never_reused() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.send(ok())  # keep-alive, then gone: the server's idle timeout

    async with Scripted(script) as server, _client(server.url) as client:
        response = await client.send("POST", "/api/chat", b"", [], b"{}")
        await collect(response.chunks())
        await until(lambda: not client._open)  # the close reached the pool
        response = await client.send("POST", "/api/chat", b"", [], b"{}")
        assert await collect(response.chunks()) == b'{"ok":true}'
    assert server.connections == 2


async def _dies_on_reuse(conn: Conn) -> None:
    """Answers the first request; on a reused connection reads the next and dies without a
    byte, as when the close crosses the request on the wire."""
    await conn.request()
    await conn.send(ok())
    await conn.request()
    conn.reset()


async def test_a_get_on_a_dead_kept_alive_connection_is_sent_again_once() -> None:
    async def script(conn: Conn) -> None:
        if conn.number == 1:
            await _dies_on_reuse(conn)
        else:
            await answer_forever(conn, ok(b"fresh"))

    async with Scripted(script) as server, _client(server.url) as client:
        await collect((await client.send("GET", "/", b"", [], b"")).chunks())
        response = await client.send("GET", "/api/tags", b"", [], b"")
        assert await collect(response.chunks()) == b"fresh"
    assert [(n, r.target) for n, r in server.requests] == [(1, "/"), (1, "/api/tags"),
                                                           (2, "/api/tags")]  # fmt: skip


async def test_a_post_on_a_dead_kept_alive_connection_is_never_sent_twice() -> None:
    async with Scripted(_dies_on_reuse) as server, _client(server.url) as client:
        await collect((await client.send("GET", "/", b"", [], b"")).chunks())
        with pytest.raises(UpstreamUnavailable):
            await client.send("POST", "/api/generate", b"", [], b'{"prompt":"once"}')
    assert [r.method for _, r in server.requests] == ["GET", "POST"]
    assert server.connections == 1


async def test_a_fresh_connection_that_dies_is_not_retried() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        conn.reset()

    async with Scripted(script) as server, _client(server.url) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.send("GET", "/", b"", [], b"")
    assert server.connections == 1


async def test_a_silent_upstream_fails_the_health_check_in_time() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.closed_by_client()

    async with Scripted(script) as server, _client(server.url) as client:
        with pytest.raises(UpstreamUnavailable, match=r"no answer within 0\.2 s"):
            await client.get_status("/", 0.2)
        await until(lambda: 1 in server.ended)  # and the connection was dropped


# -- connections and flow -----------------------------------------------------------------


async def test_closing_an_unfinished_response_drops_its_connection() -> None:
    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await conn.closed_by_client()

    async with Scripted(script) as server, _client(server.url) as client:
        response = await client.send("GET", "/", b"", [], b"")
        async for _ in response.chunks():
            break
        await response.aclose()
        await until(lambda: 1 in server.ended)


async def test_idle_connections_close_after_their_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_http, "IDLE_SECONDS", 0.05)

    async def script(conn: Conn) -> None:
        await answer_forever(conn, ok())

    async with Scripted(script) as server, _client(server.url) as client:
        await collect((await client.send("GET", "/", b"", [], b"")).chunks())
        await until(lambda: 1 in server.ended)
        assert not client._open


async def test_a_slow_consumer_pauses_reading_instead_of_buffering() -> None:
    total = 32 * 1024 * 1024

    async def script(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        piece = b"x" * 65536
        for _ in range(total // len(piece)):
            await conn.send(piece)

    async with Scripted(script) as server, _client(server.url) as client:
        response = await client.send("GET", "/", b"", [], b"")
        [conn] = client._open
        assert conn.transport is not None
        chunks = response.chunks()
        received = len(await anext(chunks))
        # The consumer stalls here: reading from Ollama must stop, with little held.
        await until(lambda: not conn.transport.is_reading())  # type: ignore[union-attr]
        assert response._size <= HIGH_WATER + 256 * 1024  # one read (256 KiB) past the mark
        async for chunk in chunks:
            received += len(chunk)
        assert received == total


async def test_ipv6_literals_are_dialled() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with (
        Scripted(lambda conn: answer_forever(conn, ok()), host="::1") as server,
        _client(server.url) as client,
    ):
        response = await client.send("GET", "/", b"", [], b"")
        assert await collect(response.chunks()) == b'{"ok":true}'
    [(_, request)] = server.requests
    assert request.header(b"host") == [server.url.removeprefix("http://").encode()]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_is_verified_then_spoken(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async with Scripted(lambda conn: answer_forever(conn, ok(b"over tls")), tls=context) as server:
        # An unknown issuer is refused as unavailable, never ignored.
        async with _client(server.url) as client:
            with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await client.send("GET", "/", b"", [], b"")
        async with _client(server.url) as client:
            client._ssl = ssl.create_default_context(cafile=str(cert))  # as if a CA issued it
            for _ in range(2):
                response = await client.send("GET", "/", b"", [], b"")
                assert await collect(response.chunks()) == b"over tls"
            assert len(client._open) == 1
