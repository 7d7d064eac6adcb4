"""The front door from outside: header and request-line caps, header/body timeouts and the
connection cap, over raw sockets against `ondemand proxy` started as docs/proxy.md says.

Limits are made small through the environment so every case takes a second or two; each
waits on what the server does (an answer, a closed socket), never on the clock.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondemand.envvalues import Env
from ondemand.errors import ConfigError, NotAvailableError
from ondemand.frontdoor import DoorLimits, protocol_class
from ondemand.processes import free_port, running
from ondemand.proxy import ProxySettings, create_app
from ondemand.sandbox.ollama import EmulatorConfig
from ondemand.sandbox.ollama import create_app as create_emulator
from ondemand.serving import BackgroundServer
from tests.proxy.rawhttp import RawResponse, get, raw_request, read_response

KEY = "odk_front_door_0123456789abcdef"
AUTH = f"Authorization: Bearer {KEY}\r\n"
LIMITS = {
    "ONDEMAND_MAX_HEADER_SIZE": "4KiB",
    "ONDEMAND_MAX_REQUEST_LINE": "1KiB",
    "ONDEMAND_MAX_HEADERS": "20",
    "ONDEMAND_HEADER_TIMEOUT": "1",
    "ONDEMAND_BODY_TIMEOUT": "1",
    "ONDEMAND_BODY_MIN_RATE": "1KiB",
}
# Each stream lasts 2.5 s and the first use of a model is silent for 1.5 s: both longer
# than every timeout above.
EMULATOR = {
    "OLLAMA_EMULATOR_MODELS": "llama3.2,qwen3",
    "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "20",
    "OLLAMA_EMULATOR_RESPONSE_TOKENS": "50",
    "OLLAMA_EMULATOR_TTFT": "0",
    "OLLAMA_EMULATOR_LOAD_TIME": "1.5",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with BackgroundServer(create_emulator(EmulatorConfig.from_env(EMULATOR))) as server:
        yield server.url


@pytest.fixture(scope="module")
def port(upstream: str) -> Iterator[int]:
    """A real `ondemand proxy` process, configured by environment only."""
    bound = free_port()
    args = [sys.executable, "-m", "ondemand", "proxy", "--upstream", upstream,
            "--host", "127.0.0.1", "--port", str(bound)]  # fmt: skip
    env = {"AUTHORIZATION_APIKEY": KEY, **LIMITS}
    with running(args, env=env, ready_url=f"http://127.0.0.1:{bound}/ping"):
        yield bound


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _closed_by_server(sock: socket.socket) -> bool:
    """Read until the server ends the connection; True if it did (within the timeout)."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _send_until_answered(sock: socket.socket, first: bytes, piece: bytes, most: int) -> int:
    """Send ``first`` then ``piece`` after ``piece`` until the server answers (or
    resets); the bytes sent by then."""
    sock.sendall(first)
    sent = len(first)
    while sent < most:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return sent


def _trickle(sock: socket.socket, data: bytes) -> bool:
    """Send ``data`` one byte every 0.2 s; True once the server answers (or hangs up)
    before the last byte, False if it let all of it trickle in."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return True
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            return True
    return False


def _chat(model: str = "llama3.2", stream: bool = True) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()


# -- sizes ------------------------------------------------------------------------------


def test_an_oversized_request_line_gets_414_and_the_connection_closes(port: int) -> None:
    with _connect(port) as sock:
        sent = _send_until_answered(sock, b"GET /api/tags?q=", b"a" * 256, 50 << 20)
        response = read_response(sock)
        assert response.status == 414
        assert response.json() == {"error": "request line too long"}
        assert response.headers["connection"] == "close"
        assert _closed_by_server(sock)
    # Answered long before the client would have finished (how long before depends on
    # when this busy machine schedules the server: no tighter bound holds).
    assert sent < 8 << 20


def test_an_oversized_header_block_in_pieces_is_answered_before_the_client_finishes(
    port: int,
) -> None:
    head = f"GET /api/tags HTTP/1.1\r\nHost: x\r\n{AUTH}X-Filler: ".encode()
    with _connect(port) as sock:
        sent = _send_until_answered(sock, head, b"a" * 512, 50 << 20)
        response = read_response(sock)
        assert response.status == 431
        assert response.json() == {"error": "request header fields too large"}
        assert _closed_by_server(sock)
    # Answered within a few pieces of the 4 KiB cap, not after the 50 MiB the client meant.
    assert sent < 8 << 20


def test_many_small_headers_past_the_size_cap_get_431(port: int) -> None:
    lines = "".join(f"X-{i}: {'v' * 250}\r\n" for i in range(19))
    request = f"GET /api/tags HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
    assert len(request) > 4096
    response = raw_request(port, request)
    assert response.status == 431


def test_too_many_headers_get_431_and_the_connection_closes(port: int) -> None:
    lines = "".join(f"X-{i}: v\r\n" for i in range(21))
    with _connect(port) as sock:
        sock.sendall(f"GET /ping HTTP/1.1\r\n{lines}\r\n".encode())
        response = read_response(sock)
        assert response.status == 431
        assert response.json() == {"error": "too many header fields"}
        assert _closed_by_server(sock)


def test_a_request_at_the_limits_is_served(port: int) -> None:
    # 20 headers, the whole head just under 4 KiB, the request line just under 1 KiB.
    filler = "".join(f"X-{i}: v\r\n" for i in range(16))
    path = "/api/tags?" + "q" * 900
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\n{AUTH}{filler}Connection: close\r\nX-Pad: "
    pad = 4096 - len(head) - len("\r\n\r\n")
    response = raw_request(port, (head + "p" * pad + "\r\n\r\n").encode())
    assert response.status == 200, response.body
    assert "models" in response.json()  # type: ignore[operator]


def test_a_malformed_request_gets_400_and_close(port: int) -> None:
    response = raw_request(port, b"GET /ping HTTP/1.1\r\nBad Header\r\n\r\n")
    assert response.status == 400
    assert response.headers["connection"] == "close"


def test_normal_clients_are_served_while_oversized_heads_flood_in(port: int) -> None:
    stop = threading.Event()
    refused: list[int] = []

    def flood() -> None:
        head = b"GET /ping HTTP/1.1\r\nX-Big: "
        while not stop.is_set():
            with contextlib.suppress(OSError), _connect(port, timeout=5) as sock:
                _send_until_answered(sock, head, b"a" * 65536, 50 << 20)
                refused.append(read_response(sock).status)

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in flooders:
        thread.start()
    try:
        while len(refused) < 20:  # the flood is under way
            select.select([], [], [], 0.01)
        for _ in range(20):
            ping = raw_request(port, get(port, "/ping"), timeout=2)
            assert ping.status == 200
            tags = raw_request(port, get(port, "/api/tags", AUTH), timeout=2)
            assert tags.status == 200
    finally:
        stop.set()
        for thread in flooders:
            thread.join(10)
    assert set(refused) == {431}


# -- pipelined heads ---------------------------------------------------------------------

# A head over the 4 KiB cap, and a last request that ends the connection either way.
BIG_HEAD = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 5000 + b"\r\n\r\n"
PING = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
LAST = b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
SHOW = json.dumps({"model": "llama3.2", "pad": "s" * 6000}).encode()
SIZED = (
    f"POST /api/show HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
    f"Content-Length: {len(SHOW)}\r\n\r\n"
).encode() + SHOW
CHUNKED = (
    f"POST /api/show HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n"
    f"{len(SHOW) - 1000:x}\r\n".encode() + SHOW[:-1000]
    + f"\r\n{1000:x}\r\n".encode() + SHOW[-1000:] + b"\r\n0\r\n\r\n"
)  # fmt: skip
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def _statuses(data: bytes) -> list[int]:
    return [int(code) for code in STATUS.findall(data)]


@pytest.mark.parametrize(
    "sends",
    [
        # One read: a sized body ending past the first 4 KiB, then the oversized head.
        [(SIZED + BIG_HEAD + LAST, 0)],
        # The same with a chunked body.
        [(CHUNKED + BIG_HEAD + LAST, 0)],
        # The oversized head begins in the read that ends the request before it and ends
        # in the next: neither read holds more than 4 KiB of it.
        [(PING + BIG_HEAD[:3000], 1), (BIG_HEAD[3000:] + LAST, 0)],
        # The same, with the blank line ending the request before it split across reads.
        [(PING + PING[:-1], 1), (PING[-1:] + BIG_HEAD[:3000], 2), (BIG_HEAD[3000:] + LAST, 0)],
        # The same after a chunked body whose closing blank line is split across reads.
        [(PING + CHUNKED[:-1], 1), (CHUNKED[-1:] + BIG_HEAD[:3000], 2), (BIG_HEAD[3000:], 0)],
    ],
    ids=["sized-body", "chunked-body", "split-head", "split-blank-line", "split-chunked-end"],
)
def test_a_pipelined_head_over_the_cap_gets_431_however_the_reads_split(
    port: int, sends: list[tuple[bytes, int]]
) -> None:
    """Every byte of a head counts against ONDEMAND_MAX_HEADER_SIZE, those that share a
    read with the end of the request before it included."""
    received = b""
    with _connect(port) as sock:
        for piece, answered in sends:
            sock.sendall(piece)
            # The next piece goes out once the server has answered the requests this one
            # completed: it was read, and what follows comes in a read of its own.
            while len(_statuses(received)) < answered:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    # The requests before it are answered (those still in the app when the refusal is
    # written are cut off with the connection); the oversized one, never.
    statuses = _statuses(received)
    assert statuses[-1] == 431, received
    assert statuses[:-1] == [200] * (len(statuses) - 1), received
    assert received.endswith(b'{"error": "request header fields too large"}')


def test_pipelined_heads_each_under_the_cap_are_all_served(port: int) -> None:
    """Counted exactly, not by the read: heads of 3 KiB, together far over the cap, sent
    at once after bodies of both kinds, each one complete in the read with the next."""
    pad = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    with _connect(port) as sock:
        sock.sendall(SIZED + pad + CHUNKED + pad + pad + pad + LAST)
        received = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    assert _statuses(received) == [200] * 7, received


# -- time -------------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_header_timeout(port: int) -> None:
    with _connect(port, timeout=10) as sock:
        started = time.monotonic()
        assert _closed_by_server(sock)  # nothing written: closed quietly, no answer
        assert time.monotonic() - started < 5


def test_slow_headers_get_408_and_close(port: int) -> None:
    with _connect(port, timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /ping HTTP/1.1\r\n")
        response = read_response(sock)
        assert response.status == 408
        assert response.json() == {"error": "timed out reading the request headers"}
        assert _closed_by_server(sock)
        assert time.monotonic() - started < 5


def test_slow_headers_are_timed_out_although_each_byte_arrives_in_time(port: int) -> None:
    """One byte every 0.2 s never lets a 1 s gap pass, yet the head has 1 s in all."""
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    with _connect(port, timeout=10) as sock:
        if not _trickle(sock, request):
            pytest.fail("the server let the head trickle for 20 s")
        assert read_response(sock).status == 408


def test_a_keep_alive_connection_gets_the_header_timeout_after_each_response(
    port: int,
) -> None:
    with _connect(port, timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).status == 200
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).status == 200
        assert _closed_by_server(sock)


def test_a_trickled_body_gets_408(port: int) -> None:
    body = _chat(stream=False)
    head = f"POST /api/chat HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {len(body)}\r\n\r\n"
    with _connect(port, timeout=10) as sock:
        sock.sendall(head.encode())
        if not _trickle(sock, body):
            pytest.fail("the server let the body trickle to its end")
        response = read_response(sock)
        assert response.status == 408
        assert response.json() == {"error": "timed out reading the request body"}


def test_a_body_that_stops_coming_gets_408_after_the_gap_not_the_whole_allowance(
    port: int,
) -> None:
    """100 KiB at once earns 100 s more at the minimum rate, but no gap between two pieces
    may pass ONDEMAND_BODY_TIMEOUT (1 s here)."""
    head = (f"POST /api/chat HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {200 << 10}"
            "\r\n\r\n")  # fmt: skip
    with _connect(port, timeout=10) as sock:
        sock.sendall(head.encode() + b'{"model":"llama3.2","prompt":"' + b"x" * (100 << 10))
        started = time.monotonic()
        response = read_response(sock)
        assert response.status == 408
        assert response.json() == {"error": "timed out reading the request body"}
        assert time.monotonic() - started < 5


def test_an_upload_at_a_normal_rate_longer_than_the_timeouts_passes(port: int) -> None:
    """3 MiB at ~1.5 MiB/s: two seconds of body, past the 1 s grace and timeouts."""
    text = "x" * (3 << 20)
    body = json.dumps(
        {"model": "llama3.2", "prompt": text, "stream": False, "options": {"num_predict": 2}}
    ).encode()
    head = f"POST /api/generate HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {len(body)}\r\n"
    with _connect(port, timeout=30) as sock:
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        for offset in range(0, len(body), 64 * 1024):
            sock.sendall(body[offset : offset + 64 * 1024])
            select.select([], [], [], 0.04)  # pacing the upload, not synchronising
        response = read_response(sock)
    assert response.status == 200, response.body
    assert response.json()["done"] is True  # type: ignore[index]


def _stream(port: int, model: str) -> tuple[RawResponse, float]:
    started = time.monotonic()
    response = raw_request(
        port, get(port, "/api/chat", AUTH, method="POST", body=_chat(model)), timeout=30
    )
    return response, time.monotonic() - started


def test_a_silent_model_load_and_a_long_stream_are_not_cut(port: int) -> None:
    """qwen3 loads for 1.5 s before its first byte, then streams for 2.5 s."""
    response, took = _stream(port, "qwen3")
    assert response.status == 200
    lines = [json.loads(line) for line in response.body.splitlines() if line.strip()]
    assert lines[-1]["done"] is True
    assert len(lines) > 40
    assert took > 3.5  # longer than every timeout, and not cut


# -- connections ------------------------------------------------------------------------


@pytest.fixture
def capped(upstream: str) -> Iterator[int]:
    """A proxy that holds at most 8 connections."""
    settings = ProxySettings.from_env(
        {"AUTHORIZATION_APIKEY": KEY, "ONDEMAND_MAX_CONNECTIONS": "8", **LIMITS},
        upstream=upstream,
    )
    assert settings.door.max_connections == 8
    with BackgroundServer(create_app(settings), lifespan="on", limits=settings.door) as srv:
        yield srv.port


def test_beyond_the_cap_idle_connections_make_room_for_new_ones(capped: int) -> None:
    held = [_connect(capped) for _ in range(8)]
    try:
        for sock in held:  # each is open on the server's side once it answered on it
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).status == 200
        # A ninth client is served: the connection idle the longest is closed for it.
        assert raw_request(capped, get(capped, "/ping")).status == 200
        assert _closed_by_server(held[0])
        held[1].sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(held[1]).status == 200
    finally:
        for sock in held:
            sock.close()


def test_beyond_the_cap_of_busy_connections_new_ones_get_503(capped: int) -> None:
    body = _chat()
    request = f"POST /api/chat HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {len(body)}\r\n\r\n"
    busy: list[socket.socket] = []
    try:
        for _ in range(8):  # 8 streams of 2.5 s each, under way
            # Each connects as it sends: one opened earlier would sit idle through the
            # first stream's model load (1.5 s), past the header timeout (1 s).
            busy.append(sock := _connect(capped))
            sock.sendall(request.encode() + body)
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
        with _connect(capped) as extra:
            over = read_response(extra)  # answered before it sends anything
            assert over.status == 503
            assert over.headers["retry-after"] == "1"
            assert over.json() == {"error": "too many connections; retry shortly"}
            assert _closed_by_server(extra)
        for sock in busy:  # and the streams run to their end
            rest = b""
            while not rest.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, rest[-200:]
                rest += chunk
            assert b'"done":true' in rest
    finally:
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the slots free once the server has seen the closes
        answer = raw_request(capped, get(capped, "/ping"))
        if answer.status == 200 or time.monotonic() > deadline:
            break
    assert answer.status == 200


def test_limits_are_read_from_the_environment_and_bad_values_refused() -> None:
    limits = DoorLimits.from_env({**LIMITS, "ONDEMAND_MAX_CONNECTIONS": "50"})
    assert limits == DoorLimits(
        max_head=4096, max_request_line=1024, max_headers=20, header_timeout=1.0,
        body_grace=1.0, body_min_rate=1024, max_connections=50,
    )  # fmt: skip
    assert DoorLimits.from_env({}) == DoorLimits()
    for name, value in [
        ("ONDEMAND_MAX_HEADER_SIZE", "lots"),
        ("ONDEMAND_MAX_HEADERS", "0"),
        ("ONDEMAND_HEADER_TIMEOUT", "-1"),
        ("ONDEMAND_MAX_CONNECTIONS", "1.5"),
        ("ONDEMAND_MAX_HEADER_SIZE", "0"),
        ("ONDEMAND_MAX_REQUEST_LINE", "0KiB"),
        ("ONDEMAND_BODY_MIN_RATE", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            DoorLimits.from_env({name: value})
    with pytest.raises(ConfigError, match="ONDEMAND_MAX_HEADER_SIZE must be at least 1 byte"):
        DoorLimits.from_env({"ONDEMAND_MAX_HEADER_SIZE": "0"})
    assert DoorLimits.from_env({"ONDEMAND_BODY_MIN_RATE": "1"}).body_min_rate == 1
    # Elsewhere a size of 0 keeps its meaning (ONDEMAND_MAX_BODY=0: no body at all).
    assert Env({"ONDEMAND_MAX_BODY": "0"}).size("ONDEMAND_MAX_BODY", 64) == 0


def test_a_uvicorn_without_what_the_door_extends_is_refused_by_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    limits = DoorLimits(max_connections=8)
    assert protocol_class(limits).__mro__[1] is HttpToolsProtocol
    with monkeypatch.context() as patched:
        patched.delattr(HttpToolsProtocol, "_unsupported_upgrade_warning")
        with pytest.raises(NotAvailableError) as lacking:
            protocol_class(limits)
    assert lacking.value.message == (
        f"uvicorn {uvicorn.__version__} is not supported by ondemand's front door "
        "(its HTTP protocol lacks _unsupported_upgrade_warning)"
    )
    assert lacking.value.hint is not None
    assert "uvicorn>=0.30.6" in lacking.value.hint
    monkeypatch.setattr(uvicorn, "__version__", "0.30.5")
    with pytest.raises(NotAvailableError, match=r"^uvicorn 0\.30\.5 is not supported"):
        protocol_class(limits)


# -- ondemand serve ---------------------------------------------------------------------


def test_ondemand_serve_enforces_the_same_limits(tmp_path: Path) -> None:
    """The image's entrypoint, with the emulator as its `ollama`, configured by environment."""
    from ondemand.sandbox.ollama import write_standin

    bound, ollama_port = free_port(), free_port()
    env = {
        **LIMITS,
        "OLLAMA_BIN": str(write_standin(tmp_path / "bin")),
        "OLLAMA_MODELS": str(tmp_path / "models"),
        "OLLAMA_EMULATOR_MODELS": "llama3.2",
        "OLLAMA_EMULATOR_LOAD_TIME": "0.05",
        "OLLAMA_EMULATOR_PULL_SECONDS": "0.05",
        "OLLAMA_PRELOAD_MODELS": "llama3.2",
        "AUTHORIZATION_APIKEY": KEY,
        "HOST": "127.0.0.1",
        "PORT": str(bound),
        "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
    }
    args = [sys.executable, "-m", "ondemand", "serve"]
    with running(args, env=env, ready_url=f"http://127.0.0.1:{bound}/ping"):
        lines = "".join(f"X-{i}: v\r\n" for i in range(21))
        assert raw_request(bound, f"GET /ping HTTP/1.1\r\n{lines}\r\n".encode()).status == 431
        with _connect(bound) as sock:
            sent = _send_until_answered(sock, b"GET /ping HTTP/1.1\r\nX: ", b"a" * 512, 50 << 20)
            assert read_response(sock).status == 431
        assert sent < 8 << 20
        with _connect(bound, timeout=10) as sock:
            assert _closed_by_server(sock)
        assert raw_request(bound, get(bound, "/api/tags", AUTH)).status == 200
