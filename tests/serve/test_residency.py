"""The residency check of ``ondemand serve`` (``Serve.check_residency``) against the Ollama
emulator over loopback: a model that is being loaded, by a re-warm of ours or by Ollama for
a request, is not gone, and is never loaded a second time because of the check.

The check is driven directly; each step waits on what the emulator or the server did (an
answer taken, a task done), never on the clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ondemand.proxy import ProxySettings
from ondemand.sandbox.ollama import EmulatorConfig, Fault
from ondemand.sandbox.ollama import create_app as create_emulator
from ondemand.sandbox.ollama.app import Emulator
from ondemand.serve.models import Phase
from ondemand.serve.preload import WarmPolicy
from ondemand.serve.server import READY, REWARMING, Serve
from ondemand.serve.settings import ServeSettings
from ondemand.serving import BackgroundServer

pytestmark = pytest.mark.anyio

# Loads take long enough for a check to land in the middle of one.
KEY = "odk_residency_test_0123456789ab"
EMULATOR = {"OLLAMA_EMULATOR_MODELS": "llama3.2", "OLLAMA_EMULATOR_LOAD_TIME": "0.3"}


class HeldPs:
    """The emulator, except that one /api/ps answer, once asked for, is taken from the
    emulator at once and handed over only when released: an answer that is stale on
    arrival."""

    def __init__(self, app: Emulator) -> None:
        self.app = app
        self.holding = False
        self.taken = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (self.holding and scope["type"] == "http" and scope["path"] == "/api/ps"):
            await self.app(scope, receive, send)
            return
        self.holding = False
        held: list[Any] = []

        async def keep(message: Any) -> None:
            held.append(message)

        await self.app(scope, receive, keep)
        self.taken.set()
        await asyncio.to_thread(self.release.wait, 30)
        for message in held:
            await send(message)


@pytest.fixture
def emulator() -> Emulator:
    return create_emulator(EmulatorConfig.from_env(EMULATOR))


@pytest.fixture
def held(emulator: Emulator) -> Iterator[tuple[HeldPs, int]]:
    gate = HeldPs(emulator)
    with BackgroundServer(gate) as server:
        yield gate, server.port


async def _ready(port: int) -> Serve:
    """A server whose Ollama is the emulator on ``port``, its model preloaded."""
    url = f"http://127.0.0.1:{port}"
    settings = ServeSettings(
        proxy=ProxySettings.from_env({"AUTHORIZATION_APIKEY": KEY}, upstream=url),
        ollama_bin="ollama",
        ollama_port=port,
        models=("llama3.2",),
        policy=WarmPolicy(),
        residency_interval=0,
    )
    serve = Serve(settings, {})
    await serve._on_ollama_up()
    assert serve._preload is not None
    await serve._preload
    assert serve.state.phase == READY
    return serve


async def _generate(port: int, body: dict[str, object]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        response = await client.post("/api/generate", json={"model": "llama3.2", **body})
        assert response.status_code == 200, response.text


async def test_an_answer_from_before_a_rewarm_does_not_start_another(
    emulator: Emulator, held: tuple[HeldPs, int]
) -> None:
    gate, port = held
    serve = await _ready(port)
    assert emulator.stats.loads == 1
    await _generate(port, {"keep_alive": 0})  # unloaded behind the server's back
    assert emulator.loaded() == []

    # One check asks /api/ps now (the model is gone) and gets the answer only later.
    gate.holding = True
    late = asyncio.ensure_future(serve.check_residency())
    assert await asyncio.to_thread(gate.taken.wait, 10)

    # Meanwhile another check loads it again, and one during that load changes nothing.
    await serve.check_residency()
    rewarm = serve._rewarm
    assert rewarm is not None
    assert serve.state.phase == REWARMING
    await serve.check_residency()
    assert serve._rewarm is rewarm
    await rewarm
    assert serve.state.phase == READY
    assert emulator.stats.loads == 2

    # The late answer says "gone"; it predates the re-warm, so it is not acted on.
    gate.release.set()
    await late
    assert serve._rewarm is rewarm
    assert serve.state.phase == READY
    assert serve.state.models[0].phase is Phase.WARM
    assert emulator.stats.loads == 2


async def test_a_model_reloaded_for_a_request_is_present_while_it_loads(
    emulator: Emulator, held: tuple[HeldPs, int]
) -> None:
    _, port = held
    serve = await _ready(port)
    # Another num_ctx makes Ollama unload the model and load it again for this request.
    dropped = threading.Event()
    record = emulator.stats.event

    def noticed(kind: str, **fields: Any) -> dict[str, Any]:
        if kind == "unload" and fields.get("reason") == "reload":
            dropped.set()
        return record(kind, **fields)

    emulator.stats.event = noticed  # type: ignore[method-assign]
    request = asyncio.ensure_future(_generate(port, {"options": {"num_ctx": 8192}}))
    assert await asyncio.to_thread(dropped.wait, 10)
    assert not request.done()

    await serve.check_residency()
    assert serve._rewarm is None
    assert serve.state.phase == READY
    assert [m["context_length"] for m in emulator.loaded()] == [8192]

    await request
    assert emulator.stats.loads == 2  # the preload and the request's reload, nothing more
    await serve.check_residency()
    assert serve._rewarm is None
    assert serve.state.phase == READY


async def test_a_rewarm_cut_off_by_an_error_is_tried_again_by_the_next_check(
    emulator: Emulator, held: tuple[HeldPs, int]
) -> None:
    _, port = held
    serve = await _ready(port)
    await _generate(port, {"keep_alive": 0})  # unloaded behind the server's back
    # The re-warm's first call to Ollama fails, Ollama staying up.
    emulator.config.faults.append(Fault(path="/api/tags", status=500))
    await serve.check_residency()
    assert serve._rewarm is not None
    await serve._rewarm
    assert serve.state.phase == REWARMING  # /ping keeps saying 204: nothing is loaded
    assert emulator.loaded() == []

    await serve.check_residency()
    assert serve._rewarm is not None
    await serve._rewarm
    assert serve.state.phase == READY
    assert serve.state.models[0].phase is Phase.WARM
    assert [m["name"] for m in emulator.loaded()] == ["llama3.2:latest"]
