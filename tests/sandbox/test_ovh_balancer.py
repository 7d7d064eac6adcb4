"""The OVH apps' load balancer on its own, in front of small loopback servers: refused
replicas skipped, requests passed as sent, answers streamed, disconnects passed on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from ondemand.asgi import Receive, Scope, Send, send_json
from ondemand.processes import free_port, port_free
from ondemand.sandbox.ovh.balancer import Balancer
from ondemand.serving import BackgroundServer


class Backend:
    """An ASGI app that says what it received, and streams until its client goes away."""

    def __init__(self) -> None:
        self.disconnected = threading.Event()
        self.left_waiting = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":  # never answers, as while a model loads
            while (await receive())["type"] != "http.disconnect":
                pass
            self.left_waiting.set()
            return
        if scope["path"] != "/stream":
            message = await receive()
            await send_json(
                send,
                200,
                {
                    "path": scope["raw_path"].decode(),
                    "query": scope["query_string"].decode(),
                    "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                    "body": message.get("body", b"").decode(),
                },
                [(b"x-backend", b"yes")],
            )
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        streaming = asyncio.ensure_future(_tick(send))
        while (await receive())["type"] != "http.disconnect":
            pass
        streaming.cancel()
        self.disconnected.set()


async def _tick(send: Send) -> None:
    while True:
        await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
        await asyncio.sleep(0.02)


@pytest.fixture
def backend() -> Iterator[tuple[Backend, int]]:
    app = Backend()
    with BackgroundServer(app) as server:
        yield app, server.port


def test_the_balancer_skips_a_refusing_replica_and_passes_requests_as_sent(
    backend: tuple[Backend, int],
) -> None:
    app, live = backend
    dead = free_port()
    targets: list[tuple[int, int]] = [(0, dead), (1, live)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        balancer = Balancer(lambda: targets, grace=1)
        balancer.listen(port)
        try:
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as http:
                for _ in range(4):  # replica 0 refuses each time: replica 1 answers
                    answer = await http.post("/v1/models/a%2Fb?x=1", content=b"hello")
                    assert answer.status_code == 200
                seen = answer.json()
                assert seen["path"] == "/v1/models/a%2Fb"
                assert (seen["query"], seen["body"]) == ("x=1", "hello")
                assert seen["headers"]["host"] == f"127.0.0.1:{port}"
                assert answer.headers["x-backend"] == "yes"
                assert "server" not in answer.headers
                assert len(answer.headers.get_list("date")) == 1

                async with http.stream("GET", "/stream") as stream:
                    async for chunk in stream.aiter_raw():
                        assert chunk.startswith(b"tick")
                        break
                await asyncio.to_thread(app.disconnected.wait, 10)
                assert app.disconnected.is_set()  # the client left: so did the balancer
                with pytest.raises(httpx.ReadTimeout):
                    await http.get("/slow", timeout=httpx.Timeout(10, read=0.3))
                await asyncio.to_thread(app.left_waiting.wait, 10)
                assert app.left_waiting.is_set()  # even before the answer started

                targets[:] = [(0, dead)]
                refused = await http.get("/ping")
                assert refused.status_code == 502
                targets.clear()
                none = await http.get("/ping")
                assert none.status_code == 503
                assert none.text.startswith("503 Service Temporarily Unavailable")
        finally:
            await balancer.close()

    asyncio.run(scenario())
    assert port_free(port)
