"""Shared fixtures of the hostile-client suite: real servers started as the docs say, an
upstream that records the raw bytes it receives, and a client that sends bytes as written.

- ``ondemand proxy`` runs as a subprocess (``python -m ondemand proxy --upstream URL``, keys
  from the environment), in front of ``RawUpstream`` (what reached Ollama, byte for byte)
  or of the Ollama emulator.
- ``ondemand serve`` runs as a subprocess with the emulator as its ``ollama`` (the stand-in
  the sandbox uses), as the image starts it.
- Each server's stdout and stderr go to files the tests read (secrets must never be there).

Servers are module-scoped: tests that do not change settings share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ondemand.processes import free_port
from ondemand.sandbox.ollama import write_standin
from ondemand.sandbox.ollama.app import Emulator
from ondemand.serving import BackgroundServer
from tests.cloud import stop_group
from tests.conftest import serve_emulator
from tests.proxy.rawhttp import RawResponse, _dechunk, _headers

USER_KEY = "odk_hostile_user_5b9e0c7d1f2a"
ADMIN_KEY = "odk_hostile_admin_8c3d6e1f4a7b"
LIMITED_KEY = "odk_hostile_limited_2e7f9a0b3c5d"
BASIC_USER, BASIC_PASSWORD = "hostileuser", "hostile-basic-pw-4d8e1a"
WEBHOOK_KEY = "odk_hostile_webhook_6f0a2b4c8d1e"
# Small, so over-the-cap bodies cost nothing to send.
MAX_BODY = 64 * 1024
LIMITED_MODEL = "llama3.2"

KEYS_FILE = f"""\
- name: limited
  key: {LIMITED_KEY}
  models: [{LIMITED_MODEL}]
"""


def proxy_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The proxy's keys and limits, as a deployment sets them."""
    keys_file = tmp / "keys.yml"
    keys_file.write_text(KEYS_FILE)
    return {
        "AUTHORIZATION_APIKEY": USER_KEY,
        "ONDEMAND_ADMIN_KEY": ADMIN_KEY,
        "ONDEMAND_KEYS_FILE": str(keys_file),
        "ONDEMAND_BASIC_AUTH": f"{BASIC_USER}:{BASIC_PASSWORD}",
        "ONDEMAND_MAX_BODY": str(MAX_BODY),
        **extra,
    }


# -- processes ------------------------------------------------------------------------


@dataclass
class Process:
    """A server subprocess and the files its stdout and stderr go to."""

    proc: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.proc, 10)  # the whole group: serve's Ollama must not outlive it


def _clean_environ() -> dict[str, str]:
    ours = ("AUTHORIZATION_", "ONDEMAND_", "OLLAMA_", "PRELOAD_", "USER_MODEL_METRICS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def _wait_until(condition: Callable[[], bool], proc: Process, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{proc.output()[-3000:]}")
        time.sleep(0.02)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _python(open_files: tuple[int, int] | None) -> list[str]:
    """The interpreter, started under an RLIMIT_NOFILE of (soft, hard) when given: a
    launcher sets it and execs, so the server's pid is the one started."""
    if open_files is None:
        return [sys.executable]
    launcher = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {open_files!r}); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    return [sys.executable, "-c", launcher]


_LISTENING = re.compile(r"proxy listening on http://[^:]+:(\d+)")


def start_proxy_process(
    tmp: Path, upstream: str, env: Mapping[str, str], *, open_files: tuple[int, int] | None = None
) -> Process:
    """``ondemand proxy --upstream URL`` on a port of its choosing (docs/proxy.md), with
    ``open_files`` as its (soft, hard) RLIMIT_NOFILE if given, as `ulimit -n` would set it."""
    tmp.mkdir(parents=True, exist_ok=True)
    out, err = tmp / "proxy.out", tmp / "proxy.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*_python(open_files), "-m", "ondemand", "proxy", "--upstream", upstream,
             "--host", "127.0.0.1", "--port", "0"],
            env={**_clean_environ(), **env},
            stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    started = Process(proc, 0, out, err)

    def listening() -> bool:
        match = _LISTENING.search(started.output())
        if match:
            started.port = int(match.group(1))
        return bool(match) and _accepts(started.port)

    try:
        _wait_until(listening, started, "ondemand proxy listening", 20)
    except BaseException:
        started.stop()
        raise
    return started


@dataclass
class Served(Process):
    ollama_port: int = 0

    def ollama_pids(self) -> list[int]:
        """The processes serve started (its Ollama), from /proc."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []


def start_serve_process(tmp: Path, env: Mapping[str, str]) -> Served:
    """``ondemand serve`` with the emulator as ``ollama`` (docs/image.md, docs/serve.md)."""
    tmp.mkdir(parents=True, exist_ok=True)
    standin = write_standin(tmp / "bin")
    port, ollama_port = free_port(), free_port()
    full = {
        **_clean_environ(),
        "OLLAMA_BIN": str(standin),
        "OLLAMA_MODELS": str(tmp / "models"),
        "OLLAMA_EMULATOR_MODELS": "llama3.2,mistral,nomic-embed-text=embed",
        "OLLAMA_EMULATOR_LOAD_TIME": "0",
        "OLLAMA_EMULATOR_PULL_SECONDS": "0.05",
        "OLLAMA_EMULATOR_TTFT": "0",
        "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "0",
        "OLLAMA_PRELOAD_MODELS": LIMITED_MODEL,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
        "ONDEMAND_DRAIN_TIMEOUT": "5",
        **env,
    }
    out, err = tmp / "serve.out", tmp / "serve.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ondemand", "serve"],
            env=full, stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    served = Served(proc, port, out, err, ollama_port=ollama_port)

    def ready() -> bool:
        with contextlib.suppress(OSError, ValueError, ConnectionError):
            return raw(port, request("GET", "/ping"), timeout=2).status == 200
        return False

    try:
        _wait_until(ready, served, "ondemand serve ready", 30)
    except BaseException:
        served.stop()
        raise
    return served


# -- an upstream that keeps the bytes it received ------------------------------------------


@dataclass
class Received:
    """One request as it reached the upstream, framing and all."""

    head: bytes
    body: bytes
    raw: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def method(self) -> str:
        return self.request_line.split(b" ")[0].decode()

    @property
    def target(self) -> str:
        return self.request_line.split(b" ")[1].decode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            out.append((name.strip().lower(), value.strip()))
        return out

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers() if k == name]


class Malformed(Exception):
    pass


@dataclass
class RawUpstream:
    """A loopback HTTP/1.1 server that parses strictly and records each request's bytes.

    Anything it cannot frame exactly (both Content-Length and Transfer-Encoding, two
    lengths, a bad chunk) is recorded in ``malformed``: a proxy must never send it.
    ``GET /api/tags`` lists ``llama3.2`` and ``mistral``; everything else is 200 JSON.
    """

    seen: list[Received] = field(default_factory=list)
    malformed: list[bytes] = field(default_factory=list)
    # Tests may swap the answer: given the request, the bytes to send back.
    answer: Callable[[Received], bytes] | None = None
    sock: socket.socket = field(default_factory=socket.socket)

    def start(self) -> RawUpstream:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def clear(self) -> None:
        self.seen.clear()
        self.malformed.clear()
        self.answer = None

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    received, buffer = self._read_one(conn, buffer)
                except (Malformed, OSError) as exc:
                    if str(exc) or buffer:
                        self.malformed.append(buffer + str(exc).encode())
                    return
                self.seen.append(received)
                try:
                    conn.sendall((self.answer or _default_answer)(received))
                except OSError:
                    return

    @staticmethod
    def _recv(conn: socket.socket, buffer: bytes) -> bytes:
        chunk = conn.recv(65536)
        if not chunk:
            raise Malformed("" if not buffer else "connection closed mid-request")
        return buffer + chunk

    def _read_one(self, conn: socket.socket, buffer: bytes) -> tuple[Received, bytes]:
        while b"\r\n\r\n" not in buffer:
            buffer = self._recv(conn, buffer)
        head, _, rest = buffer.partition(b"\r\n\r\n")
        headers = _headers(head)
        names = [line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")[1:]]
        if names.count(b"content-length") > 1 or names.count(b"transfer-encoding") > 1:
            raise Malformed("repeated framing header")
        te, length = headers.get("transfer-encoding"), headers.get("content-length")
        if te is not None and length is not None:
            raise Malformed("both Content-Length and Transfer-Encoding")
        if te is not None:
            if te != "chunked":
                raise Malformed(f"transfer-encoding {te!r}")
            while not re.search(rb"(^|\r\n)0\r\n\r\n", rest):
                buffer = self._recv(conn, head + b"\r\n\r\n" + rest)
                rest = buffer.partition(b"\r\n\r\n")[2]
            end = re.search(rb"(^|\r\n)0\r\n\r\n", rest)
            assert end is not None
            chunked, after = rest[: end.end()], rest[end.end() :]
            body = _dechunk(chunked)
            return Received(head, body, head + b"\r\n\r\n" + chunked), after
        size = int(length or "0") if (length or "0").isdigit() else -1
        if size < 0:
            raise Malformed(f"content-length {length!r}")
        while len(rest) < size:
            buffer = self._recv(conn, head + b"\r\n\r\n" + rest)
            rest = buffer.partition(b"\r\n\r\n")[2]
        body, after = rest[:size], rest[size:]
        return Received(head, body, head + b"\r\n\r\n" + body), after


def _default_answer(received: Received) -> bytes:
    if received.target.startswith("/api/tags"):
        body = (
            b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"},'
            b'{"name":"mistral:latest","model":"mistral:latest"}]}'
        )
    else:
        body = b'{"ok":true}'
    return json_response(200, body)


def json_response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, content_type, len(body))
    ) + body


# -- a client that sends bytes as written ---------------------------------------------------


def request(
    method: str,
    target: str,
    *,
    key: str | None = None,
    headers: str = "",
    body: bytes = b"",
    close: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """One request's bytes; ``key`` goes as ``Authorization: Bearer``."""
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if body or method in ("POST", "PUT", "DELETE"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n" + headers + "\r\n").encode() + body


def json_post(target: str, body: bytes, *, key: str | None = None, headers: str = "") -> bytes:
    return request(
        "POST", target, key=key, body=body, headers="Content-Type: application/json\r\n" + headers
    )


def raw(port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse:
    """Send ``data``; the one response (the first, if the server sent several)."""
    responses, _ = converse(port, data, timeout=timeout)
    if not responses:
        raise ConnectionError("the server closed the connection without answering")
    return responses[0]


def converse(
    port: int, data: bytes, *, timeout: float = 5.0, half_close: bool = False
) -> tuple[list[RawResponse], bool]:
    """Send ``data`` (possibly several requests) and read until the server closes: every
    response it sent, and whether it closed (False: it left us hanging until ``timeout``).
    Requests should end with ``Connection: close``; ``half_close`` also ends our side
    (which uvicorn takes as the client going away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        received, closed = b"", False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return split_responses(received), closed


def split_responses(data: bytes) -> list[RawResponse]:
    """The responses in a byte stream, framed by their Content-Length or chunks."""
    out: list[RawResponse] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"a partial response head: {data[:200]!r}")
        status = int(head.split(b"\r\n", 1)[0].split()[1])
        headers = _headers(head)
        if headers.get("transfer-encoding") == "chunked":
            end = re.search(rb"(^|\r\n)0\r\n\r\n", rest)
            framed = rest[: end.end()] if end else rest
            data = rest[len(framed) :]
            body = _dechunk(framed)
        elif "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif status in (204, 304) or 100 <= status < 200:
            body, data = b"", rest
        else:  # read to the end
            body, data = rest, b""
        out.append(RawResponse(status, headers, body))
    return out


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    server = RawUpstream().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """``ondemand proxy`` in front of the recording upstream, with every kind of key."""
    tmp = tmp_path_factory.mktemp("proxy")
    started = start_proxy_process(tmp, upstream.url, proxy_env(tmp))
    yield started
    started.stop()


@pytest.fixture
def clean(upstream: RawUpstream) -> RawUpstream:
    """The recording upstream, emptied for this test."""
    upstream.clear()
    return upstream


@dataclass
class Emulated:
    proxy: Process
    emulator: Emulator


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    """``ondemand proxy`` in front of the Ollama emulator (llama3.2 and mistral); the
    emulator in this process, so tests can inject its faults."""
    tmp = tmp_path_factory.mktemp("emulated")
    for app, emulator in serve_emulator("llama3.2,mistral"):
        started = start_proxy_process(tmp, emulator.url, proxy_env(tmp))
        yield Emulated(started, app)
        started.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``ondemand serve`` with the emulator as its Ollama, every kind of key."""
    tmp = tmp_path_factory.mktemp("serve")
    started = start_serve_process(tmp, proxy_env(tmp))
    yield started
    started.stop()


def upstream_background(app: object) -> BackgroundServer:
    """An in-process ASGI upstream (tests/proxy/recorder.py) on loopback."""
    return BackgroundServer(app).start()  # type: ignore[arg-type]


# -- leases and their per-run keys ----------------------------------------------------------


def take_lease(port: int, models: list[str] | None = None) -> tuple[str, str]:
    """A lease with a per-run key (docs/proxy.md, Leases): its id and the key."""
    key_spec: object = {"models": models} if models is not None else True
    body = json.dumps({"holder": "org/repo/1/hostile/1", "ttl_seconds": 600, "key": key_spec})
    answer = raw(port, json_post("/ondemand/leases", body.encode(), key=ADMIN_KEY))
    assert answer.status == 201, answer.body
    data = answer.json()
    assert isinstance(data, dict)
    return str(data["id"]), str(data["key"])


def release_lease(port: int, lease_id: str) -> None:
    answer = raw(port, request("DELETE", f"/ondemand/leases/{lease_id}", key=ADMIN_KEY))
    assert answer.status == 200, answer.body
    assert answer.json() == {**answer.json(), "released": True}  # type: ignore[dict-item]
