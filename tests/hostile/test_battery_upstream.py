"""When Ollama fails: an error status, an error or a cut in the middle of a stream, death,
refused connections. The client always gets an answer or a terminated stream in its route's
dialect (NDJSON or SSE), never a hang, and the proxy logs no traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondemand.processes import free_port
from tests.hostile.conftest import (
    USER_KEY,
    Emulated,
    Process,
    _clean_environ,
    converse,
    json_post,
    proxy_env,
    raw,
    request,
    split_responses,
    start_proxy_process,
)

NATIVE = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
OPENAI = b'{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def stream(port: int, route: str, body: bytes, timeout: float = 10) -> tuple[bytes, bytes]:
    """Send one streaming request; the raw response and its de-chunked body, read until
    the proxy closes (a hang fails after ``timeout``)."""
    data = json_post(route, body, key=USER_KEY)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    [response] = split_responses(received)
    return received, response.body


def ndjson(body: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def sse_data(body: bytes) -> list[str]:
    return [line[5:].strip() for line in body.decode().splitlines() if line.startswith("data:")]


@pytest.fixture
def emu(emulated: Emulated) -> Iterator[Emulated]:
    emulated.emulator.reset()
    yield emulated
    emulated.emulator.reset()
    assert "Traceback" not in emulated.proxy.output()


def test_an_error_status_from_ollama_passes_through_as_json(emu: Emulated) -> None:
    emu.emulator.patch_config({"faults": [{"path": "/api/chat", "status": 500}]})
    answer = raw(emu.proxy.port, json_post("/api/chat", NATIVE, key=USER_KEY))
    assert answer.status == 500
    assert "error" in answer.json()  # type: ignore[operator]


def test_an_error_line_mid_stream_ends_the_native_stream(emu: Emulated) -> None:
    emu.emulator.patch_config({"faults": [{"path": "/api/chat", "error_after_lines": 2}]})
    received, body = stream(emu.proxy.port, "/api/chat", NATIVE)
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"0\r\n\r\n"), "the chunked stream must be terminated"
    lines = ndjson(body)
    assert len(lines) == 3
    assert "error" in lines[-1]


@pytest.mark.parametrize(
    ("route", "body"), [("/api/chat", NATIVE), ("/v1/chat/completions", OPENAI)]
)
def test_ollama_cutting_a_stream_ends_it_with_an_error_item(
    emu: Emulated, route: str, body: bytes
) -> None:
    emu.emulator.patch_config({"faults": [{"path": route, "close_after_lines": 2}]})
    received, content = stream(emu.proxy.port, route, body)
    assert received.endswith(b"0\r\n\r\n"), "the chunked stream must be terminated"
    if route.startswith("/v1"):
        events = sse_data(content)
        assert len(events) == 3, events
        assert "error" in json.loads(events[-1])
    else:
        lines = ndjson(content)
        assert len(lines) == 3, lines
        assert "error" in lines[-1], lines
        assert all(not line.get("done") for line in lines)


def test_many_streams_at_once_all_complete(emu: Emulated) -> None:
    """Two hundred streams on as many connections, all sent before any is read."""
    socks = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", emu.proxy.port), timeout=10)
            sock.sendall(json_post("/api/chat", NATIVE, key=USER_KEY))
            socks.append(sock)
        for sock in socks:
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            [response] = split_responses(received)
            assert response.status == 200
            assert ndjson(response.body)[-1]["done"] is True
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def dying_ollama(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Process]]:
    """An emulated Ollama in its own process, slow enough to be killed mid-stream, with
    ``ondemand proxy`` in front."""
    port = free_port()
    env = {
        **_clean_environ(),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_EMULATOR_MODELS": "llama3.2",
        "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "50",
        "OLLAMA_EMULATOR_RESPONSE_TOKENS": "100000",
        "OLLAMA_EMULATOR_TTFT": "0",
        "OLLAMA_EMULATOR_LOAD_TIME": "0",
    }
    ollama = subprocess.Popen(
        [sys.executable, "-m", "ondemand.sandbox.ollama", "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    proxy = start_proxy_process(tmp_path, f"http://127.0.0.1:{port}", proxy_env(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while raw(proxy.port, request("GET", "/ping")).status != 200:
            assert time.monotonic() < deadline, "the emulated Ollama never answered"
            time.sleep(0.05)
        yield ollama, proxy
    finally:
        proxy.stop()
        if ollama.poll() is None:
            os.killpg(ollama.pid, signal.SIGKILL)
        ollama.wait(10)


@pytest.mark.parametrize(
    ("route", "body"), [("/api/chat", NATIVE), ("/v1/chat/completions", OPENAI)]
)
def test_ollama_dying_mid_stream_ends_the_stream_and_later_requests_get_502(
    dying_ollama: tuple[subprocess.Popen[bytes], Process], route: str, body: bytes
) -> None:
    ollama, proxy = dying_ollama
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(json_post(route, body, key=USER_KEY))
        received = b""
        while received.count(b"\n") < 12:  # the head and a few streamed items
            received += sock.recv(65536)
        os.killpg(ollama.pid, signal.SIGKILL)
        ollama.wait(10)
        while chunk := sock.recv(65536):
            received += chunk
    assert received.endswith(b"0\r\n\r\n"), received[-200:]
    [response] = split_responses(received)
    if route.startswith("/v1"):
        assert "error" in json.loads(sse_data(response.body)[-1])
    else:
        assert "error" in ndjson(response.body)[-1]
    answer = raw(proxy.port, json_post(route, body, key=USER_KEY))
    assert answer.status == 502
    assert raw(proxy.port, request("GET", "/ping")).status == 503
    assert "Traceback" not in proxy.output()


def test_ollama_refusing_connections_is_a_quick_502_in_each_dialect(tmp_path: Path) -> None:
    closed_port = free_port()
    proxy = start_proxy_process(tmp_path, f"http://127.0.0.1:{closed_port}", proxy_env(tmp_path))
    try:
        start = time.monotonic()
        native = raw(proxy.port, json_post("/api/chat", NATIVE, key=USER_KEY))
        assert native.status == 502
        assert native.json() == {"error": "upstream Ollama is unavailable"}
        openai = raw(proxy.port, json_post("/v1/chat/completions", OPENAI, key=USER_KEY))
        assert openai.status == 502
        error = openai.json()["error"]  # type: ignore[index]
        assert error["message"] == "upstream Ollama is unavailable"
        responses, closed = converse(proxy.port, request("GET", "/ping"))
        assert [r.status for r in responses] == [503]
        assert closed
        assert time.monotonic() - start < 5
        assert str(closed_port) not in (native.body + openai.body).decode()
        assert "Traceback" not in proxy.output()
    finally:
        proxy.stop()
