"""How ondemand's servers treat the process they run in."""

from __future__ import annotations

import asyncio
import gc

import httpx

from ondemand.asgi import Receive, Scope, Send, send_json
from ondemand.serving import bind, embedded_server


async def _hello(scope: Scope, _receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send_json(send, 200, {"hello": "world"})


def _serve_once(settle: bool) -> int:
    """Start a server, answer one request, stop; the frozen object count once it started."""

    async def main() -> int:
        sock = bind("127.0.0.1", 0)
        server = embedded_server(_hello, settle=settle)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn's start is a flag, not an event
            await asyncio.sleep(0.01)
        frozen = gc.get_freeze_count()
        port = sock.getsockname()[1]
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/")
        assert answer.json() == {"hello": "world"}
        server.should_exit = True
        await task
        return frozen

    try:
        return asyncio.run(main())
    finally:
        gc.unfreeze()


def test_a_server_with_its_process_to_itself_freezes_its_start_up_heap() -> None:
    # Frozen objects are never walked by the collector again: no full-collection pauses
    # over modules and settings while requests wait.
    gc.unfreeze()
    assert _serve_once(settle=True) > 10_000


def test_a_server_sharing_its_process_leaves_the_collector_alone() -> None:
    gc.unfreeze()
    assert _serve_once(settle=False) == 0
