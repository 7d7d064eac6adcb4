"""`ondemand proxy` with ONDEMAND_PROXY_WORKERS=2: two processes on one port, one count.

The kernel spreads new connections over the processes, so every check here sends its
requests on fresh connections, enough of them that all landing on one process has a
chance under 2^-20: a limit, a key or a count kept per process would fail it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ondemand.asgi import Receive, Scope, Send, read_body, send_json
from ondemand.processes import free_port
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, USER_KEY

FRESH = 24  # requests on fresh connections per check
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@dataclass
class HeldOllama:
    """An upstream whose chat streams send one line, then wait for ``release``."""

    release: threading.Event = field(default_factory=threading.Event)
    holding: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        if scope["path"] != "/api/chat":
            await send_json(send, 200, {"models": []})
            return
        line = {"model": "llama3.2", "message": {"role": "assistant", "content": "hi"}}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})  # fmt: skip
        await send({"type": "http.response.body", "body": json.dumps({**line, "done": False})
                    .encode() + b"\n", "more_body": True})  # fmt: skip
        self.holding += 1
        await asyncio.to_thread(self.release.wait)  # set by the test's thread
        self.holding -= 1
        done = {**line, "done": True, "prompt_eval_count": 3, "eval_count": 1}
        await send({"type": "http.response.body", "body": json.dumps(done).encode() + b"\n"})


@dataclass
class Proxy:
    url: str
    proc: subprocess.Popen[str]
    upstream: HeldOllama
    server: BackgroundServer

    def status(self) -> dict[str, object]:
        answer = httpx.get(self.url + "/ondemand/status", headers=ADMIN, timeout=15)
        assert answer.status_code == 200, answer.text
        data: dict[str, object] = answer.json()
        return data

    def workers(self) -> dict[str, object]:
        view = self.status()["workers"]
        assert isinstance(view, dict)
        return view

    def per_process(self) -> list[int]:
        """Requests each process forwarded, the main process's first."""
        requests = self.workers()["requests"]
        assert isinstance(requests, list)
        return requests

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def hold(self, headers: dict[str, str]) -> Held:
        """A chat stream on a connection of its own, held upstream until released."""
        held = Held(self)
        holding = self.upstream.holding + 1
        held.thread = threading.Thread(target=held.read, args=(headers,))
        held.thread.start()
        _until(lambda: self.upstream.holding == holding, "a stream held upstream")
        return held

    def fresh(
        self, method: str, path: str, timeout: float = 10, **kwargs: object
    ) -> httpx.Response:
        """One request on a connection of its own (so the kernel picks a process anew)."""
        with httpx.Client(timeout=timeout) as client:
            return client.request(method, self.url + path, **kwargs)  # type: ignore[arg-type]


@dataclass
class Held:
    """A stream ``Proxy.hold`` started: how it ended, once ``release`` let it."""

    proxy: Proxy
    thread: threading.Thread | None = None
    ended: list[tuple[int, int]] = field(default_factory=list)  # (status, lines)

    def read(self, headers: dict[str, str]) -> None:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", self.proxy.url + "/api/chat", headers=headers,
                          json=CHAT) as answer,
        ):  # fmt: skip
            self.ended.append((answer.status_code, len(list(answer.iter_lines()))))

    def release(self) -> list[tuple[int, int]]:
        self.proxy.upstream.release.set()
        assert self.thread is not None
        self.thread.join(30)
        return self.ended


def _until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Wait for ``condition``; a request that fails meanwhile (a worker starting or going
    away resets or delays what its listener held) is a "not yet"."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHORIZATION_", "ONDEMAND_"))}
    return {**env, "ONDEMAND_PROXY_WORKERS": "2", "ONDEMAND_ADMIN_KEY": ADMIN_KEY, **extra}


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(**env: str) -> Proxy:
        upstream = HeldOllama()
        server = BackgroundServer(upstream).start()
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ondemand", "proxy", "--upstream", server.url,
             "--host", "127.0.0.1", "--port", str(port)],
            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        proxy = Proxy(f"http://127.0.0.1:{port}", proc, upstream, server)
        started.append(proxy)

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return proxy.workers()["running"] == 2
            except httpx.HTTPError:
                return False

        _until(up, "both processes serving")
        return proxy

    yield start
    for proxy in started:
        proxy.upstream.release.set()  # no stream left waiting in a thread
        if proxy.proc.poll() is None:
            proxy.proc.send_signal(signal.SIGTERM)
            proxy.proc.wait(15)
        proxy.proc.communicate()
        proxy.server.stop()


def test_both_processes_forward_and_every_request_is_counted_once(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    proxy.upstream.release.set()
    key = {"Authorization": f"Bearer {USER_KEY}"}
    for _ in range(FRESH):
        assert proxy.fresh("POST", "/api/chat", headers=key, json=CHAT).status_code == 200
    status = proxy.status()
    assert status["requests"] == FRESH
    assert status["inflight"] == 0
    usage = status["usage"]
    assert isinstance(usage, dict)
    assert usage["apikey"]["requests"] == FRESH
    assert usage["apikey"]["completion_tokens"] == FRESH
    per_process = proxy.per_process()
    assert sum(per_process) == FRESH
    assert all(n > 0 for n in per_process), per_process
    metrics = httpx.get(proxy.url + "/metrics", headers=ADMIN).text
    assert f'status="200"}} {FRESH}.0' in metrics


def test_every_process_answers_as_one_replica(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    replicas = set()
    for _ in range(FRESH):
        answer = proxy.fresh("GET", "/ondemand/status", headers=ADMIN)
        assert answer.status_code == 200
        replicas.add(answer.headers["x-ondemand-replica"])
        assert proxy.fresh("GET", "/ping").status_code == 200
    assert len(replicas) == 1
    # The main process's own routes read 16 KiB of body at most; a worker holds no more.
    for _ in range(FRESH):
        big = proxy.fresh("POST", "/ondemand/leases", headers=ADMIN, content=b"x" * 1_000_000)
        assert big.status_code == 413
        assert big.json() == {"error": "the body is over 16384 bytes"}
    # A bad key is refused wherever it lands, and the main process counts every refusal.
    for _ in range(FRESH):
        answer = proxy.fresh("GET", "/api/tags", headers={"Authorization": "Bearer nope"})
        assert answer.status_code == 401
    metrics = httpx.get(proxy.url + "/metrics", headers=ADMIN).text
    assert f'ondemand_auth_failures_total{{reason="invalid"}} {FRESH}.0' in metrics


def test_what_every_processs_front_door_turned_away_is_on_metrics(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    port = int(proxy.url.rsplit(":", 1)[1])
    for _ in range(FRESH):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 400")
    counted = f'ondemand_front_door_turned_away_total{{reason="malformed"}} {FRESH}.0'
    _until(lambda: counted in httpx.get(proxy.url + "/metrics", headers=ADMIN).text,
           "every refusal counted")  # fmt: skip
    assert proxy.per_process() == [0, 0]  # none of them was a request


def test_a_keys_concurrency_limit_holds_across_processes(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yml"
    keys.write_text(json.dumps([{"name": "ci", "key": USER_KEY, "max_concurrency": 1}]))
    proxy = start_proxy(ONDEMAND_KEYS_FILE=str(keys))
    key = {"Authorization": f"Bearer {USER_KEY}"}
    held = proxy.hold(key)
    try:
        refused = [proxy.fresh("POST", "/api/chat", headers=key, json=CHAT) for _ in range(FRESH)]
        assert [r.status_code for r in refused] == [429] * FRESH
        assert all(r.headers["retry-after"] for r in refused)
    finally:
        ended = held.release()
    assert ended == [(200, 2)]
    assert proxy.fresh("POST", "/api/chat", headers=key, json=CHAT).status_code == 200
    usage = proxy.status()["usage"]
    assert isinstance(usage, dict)
    assert usage["ci"]["rate_limited"] == FRESH


def test_a_released_run_key_is_refused_by_every_process(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    proxy.upstream.release.set()
    body = {"holder": "org/repo/1/tests/1", "ttl_seconds": 600, "key": True}
    lease = proxy.fresh("POST", "/ondemand/leases", headers=ADMIN, json=body)
    assert lease.status_code == 201, lease.text
    run_key = {"Authorization": f"Bearer {lease.json()['key']}"}
    for _ in range(FRESH):
        assert proxy.fresh("POST", "/api/chat", headers=run_key, json=CHAT).status_code == 200
    released = proxy.fresh("DELETE", f"/ondemand/leases/{lease.json()['id']}", headers=ADMIN)
    assert released.status_code == 200, released.text
    for _ in range(FRESH):
        assert proxy.fresh("POST", "/api/chat", headers=run_key, json=CHAT).status_code == 401


def test_a_worker_that_dies_is_replaced_once_then_its_share_goes_elsewhere(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    proxy.upstream.release.set()
    key = {"Authorization": f"Bearer {USER_KEY}"}
    [first] = proxy.worker_pids()
    os.kill(first, signal.SIGKILL)
    _until(lambda: proxy.worker_pids() not in ([], [first]), "a new worker started")
    [second] = proxy.worker_pids()
    _until(lambda: proxy.workers()["running"] == 2, "the new worker linked")
    for _ in range(FRESH):
        assert proxy.fresh("POST", "/api/chat", headers=key, json=CHAT).status_code == 200
    # Dead again within a minute of starting: not started again, and no connection waits
    # for it (each request here has 10 s, a connection left in its queue would have all).
    os.kill(second, signal.SIGKILL)
    _until(lambda: proxy.workers()["running"] == 1, "the main process gave up on it")
    assert proxy.worker_pids() == []
    for _ in range(FRESH):
        assert proxy.fresh("POST", "/api/chat", headers=key, json=CHAT).status_code == 200
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(20) == 0
    _, stderr = proxy.proc.communicate()
    assert "2 processes serve the port" in stderr
    assert "proxy worker 1 ended (exit status -9); starting it again" in stderr
    assert "proxy worker 1 keeps failing" in stderr
    assert USER_KEY not in stderr
    assert ADMIN_KEY not in stderr


def test_sigterm_stops_every_process_taking_connections_and_lets_streams_finish(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    [worker] = proxy.worker_pids()
    # A stream held on each process: the main process drains as long as the worker does.
    key = {"Authorization": f"Bearer {USER_KEY}"}
    held = [proxy.hold(key)]
    while not all(proxy.per_process()):
        assert len(held) < FRESH, "every stream landed on one process"
        held.append(proxy.hold(key))
    proxy.proc.send_signal(signal.SIGTERM)

    def nobody_accepts() -> bool:
        for _ in range(FRESH):
            try:
                proxy.fresh("GET", "/ping", timeout=2)
            except httpx.ConnectError:
                continue  # refused
            except httpx.HTTPError:
                # Reset as its listener closed, or left unread in a queue: not refused yet
                # (a queue nobody reads would keep this from ever being true).
                return False
            return False
        return True

    # Both processes stop taking connections at once, while the streams still run: neither
    # goes on serving until the other has drained.
    _until(nobody_accepts, "no process takes new connections")
    assert proxy.proc.poll() is None
    for stream in held:
        assert stream.release() == [(200, 2)]  # every held stream ended whole
    assert proxy.proc.wait(20) == 0
    assert not Path(f"/proc/{worker}").exists()


def test_a_worker_whose_main_process_is_killed_stops(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(AUTHORIZATION_APIKEY=USER_KEY)
    [worker] = proxy.worker_pids()
    proxy.proc.kill()  # no drain, no goodbye: the worker has nobody left to count with
    proxy.proc.wait(10)
    _until(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker), "the worker ended")


def _zombie(pid: int) -> bool:
    """Ended, and waiting for a parent to read its status (its parent was killed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_temporary_directory_too_deep_for_the_relay_socket_is_a_clear_error(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "ondemand", "proxy", "--upstream", "http://127.0.0.1:9",
         "--host", "127.0.0.1", "--port", "0"],
        env=_env(AUTHORIZATION_APIKEY=USER_KEY, TMPDIR=str(deep)),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cannot create the proxy workers' socket" in result.stderr
    assert "set TMPDIR to a short writable directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stderr
