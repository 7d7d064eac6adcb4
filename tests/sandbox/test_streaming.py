"""Timing, client disconnects, injected stream failures and the control routes."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import pytest

from ondemand.asgi import Message
from ondemand.sandbox.ollama import Emulator, create_app
from ondemand.sandbox.ollama.text import REPLY
from tests.sandbox.conftest import Serve, fast_config

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def wait_for_cancel(app: Emulator, count: int = 1, timeout: float = 2.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(app.cancels()) < count and time.monotonic() < deadline:
        time.sleep(0.002)
    return app.cancels()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
    ],
)
def test_disconnect_mid_stream_cancels_and_is_recorded(
    serve: Serve, path: str, body: dict[str, Any]
) -> None:
    app, url = serve(tokens_per_second=50.0)
    with httpx.Client(base_url=url) as client, client.stream("POST", path, json=body) as r:
        lines = (line for line in r.iter_lines() if line)
        for _ in range(3):
            assert next(lines)
        closed_at = time.time()
    (event,) = wait_for_cancel(app)
    assert event["route"] == path
    assert event["model"] == "llama3.2"
    assert event["phase"] == "generate"
    assert 3 <= event["tokens_sent"] < len(REPLY)
    assert 0 <= event["time"] - closed_at < 0.25
    time.sleep(0.05)
    assert app.stats.active == 0
    tokens = app.stats.tokens
    time.sleep(0.05)
    assert app.stats.tokens == tokens == event["tokens_sent"]
    assert app.stats.completed == 0


def test_disconnect_while_not_streaming_or_loading(serve: Serve) -> None:
    app, url = serve(tokens_per_second=20.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/chat", json={**CHAT, "stream": False}, timeout=0.15)
    (event,) = wait_for_cancel(app)
    assert event["phase"] == "generate"
    assert 0 < event["tokens_sent"] < len(REPLY)

    app.patch_config({"load_time": 1.0})
    app.reset()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/generate", json={"model": "llama3.2"}, timeout=0.1)
    (event,) = wait_for_cancel(app)
    assert (event["phase"], event["tokens_sent"], event["route"]) == ("load", 0, "/api/generate")


def test_tokens_are_paced_against_absolute_deadlines(serve: Serve) -> None:
    _, url = serve(tokens_per_second=50.0, ttft=0.1, response_tokens=20)
    arrivals = []
    started = time.monotonic()
    with httpx.stream(
        "POST", url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}
    ) as r:
        for _ in r.iter_lines():
            arrivals.append(time.monotonic() - started)
    # The first token waits the TTFT; the upper bounds leave room for a loaded machine.
    assert 0.08 <= arrivals[0] <= 0.5
    # 19 gaps of 20 ms after the first token.
    assert 0.36 <= arrivals[-2] - arrivals[0] <= 0.5
    _, fast = serve(tokens_per_second=400.0, response_tokens=200)
    started = time.monotonic()
    r = httpx.post(fast + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
    assert len(r.text.splitlines()) == 201
    assert 0.49 <= time.monotonic() - started <= 0.65


def test_abrupt_close_after_k_lines(emulator: tuple[Emulator, str]) -> None:
    app, url = emulator
    app.patch_config({"faults": [{"path": "/api/chat", "close_after_lines": 3}]})
    received: list[dict[str, Any]] = []

    def read_all() -> None:
        with httpx.stream("POST", url + "/api/chat", json=CHAT) as r:
            assert r.status_code == 200
            received.extend(json.loads(line) for line in r.iter_lines())

    with pytest.raises(httpx.RemoteProtocolError):
        read_all()
    assert len(received) == 3
    assert not any(line["done"] for line in received)
    app.patch_config({"faults": [{"path": "/v1/chat/completions", "close_after_lines": 0}]})
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url + "/v1/chat/completions", json={**CHAT, "stream": False})
    assert httpx.post(url + "/api/chat", json={**CHAT, "stream": False}).status_code == 200


def test_error_line_mid_stream(emulator: tuple[Emulator, str]) -> None:
    app, url = emulator
    fault = {"path": "/api/generate", "error_after_lines": 2, "error": "llama runner crashed"}
    app.patch_config({"faults": [fault]})
    r = httpx.post(url + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200
    assert lines[2:] == [{"error": "llama runner crashed"}]
    app.patch_config({"faults": [fault]})
    with ollama.Client(host=url) as client, pytest.raises(ollama.ResponseError) as failed:
        list(client.generate(model="llama3.2", prompt="x", stream=True))
    assert failed.value.error == "llama runner crashed"


def test_many_concurrent_paced_streams(serve: Serve) -> None:
    app, url = serve(tokens_per_second=100.0)

    def one(_: int) -> int:
        r = httpx.post(url + "/api/chat", json=CHAT, timeout=10)
        return len(r.text.splitlines())

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        counts = list(pool.map(one, range(32)))
    assert counts == [len(REPLY) + 1] * 32
    # Paced side by side, not one after another (which would take 32 streams' time).
    one_after_another = 32 * len(REPLY) / 100.0
    assert time.monotonic() - started < one_after_another / 2
    assert app.stats.completed == 32
    assert app.stats.active == 0


def test_control_routes(emulator: tuple[Emulator, str]) -> None:
    app, url = emulator
    patch = {"tokens_per_second": 5, "models": ["tiny", "bge-m3=embed"], "version": "0.99.0"}
    r = httpx.post(url + "/_emulator/config", json=patch)
    assert r.status_code == 200
    assert r.json()["tokens_per_second"] == 5.0
    assert set(r.json()["models"]) == {"tiny:latest", "bge-m3:latest"}
    assert r.json()["models"]["bge-m3:latest"]["kind"] == "embedding"
    assert httpx.get(url + "/api/version").json() == {"version": "0.99.0"}
    assert app.config.tokens_per_second == 5.0
    bad = httpx.post(url + "/_emulator/config", json={"nope": 1})
    assert (bad.status_code, bad.json()) == (400, {"error": "unknown config field 'nope'"})
    bad_fault = httpx.post(url + "/_emulator/config", json={"faults": [{"times": "2"}]})
    assert bad_fault.json() == {"error": "faults: times has the wrong type"}
    assert httpx.get(url + "/_emulator/config").json()["version"] == "0.99.0"
    httpx.post(url + "/api/generate", json={"model": "tiny"})
    stats = httpx.get(url + "/_emulator/stats").json()
    assert stats["routes"] == {"GET /api/version": 1, "POST /api/generate": 1}
    assert [e["type"] for e in stats["events"]] == ["load"]
    assert [m["name"] for m in stats["loaded"]] == ["tiny:latest"]
    assert httpx.post(url + "/_emulator/reset").json() == {"status": "reset"}
    after = httpx.get(url + "/_emulator/stats").json()
    assert (after["requests"], after["events"], after["loaded"]) == (0, [], [])
    assert httpx.get(url + "/_emulator/nope").status_code == 404
    assert httpx.get(url + "/_emulator/reset").status_code == 405


@pytest.mark.anyio
async def test_a_failing_send_counts_as_a_disconnect() -> None:
    app = create_app(fast_config())
    requests = [{"type": "http.request", "body": json.dumps({**CHAT, "stream": True}).encode()}]
    bodies = 0

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body":
            bodies += 1
            if bodies > 3:
                raise ConnectionResetError("peer went away")

    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    before = asyncio.all_tasks()
    await app(scope, receive, send)
    (event,) = app.cancels()
    assert (event["route"], event["tokens_sent"]) == ("/api/chat", 3)
    assert app.stats.active == 0
    await asyncio.sleep(0)
    assert asyncio.all_tasks() <= before  # the disconnect watcher did not outlive the request
