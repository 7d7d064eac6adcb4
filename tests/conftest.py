from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from ondemand.proxy import ProxySettings, create_app
from ondemand.sandbox.ollama import EmulatorConfig
from ondemand.sandbox.ollama import create_app as create_emulator
from ondemand.sandbox.ollama.app import Emulator
from ondemand.serving import BackgroundServer
from tests.proxy.recorder import Recorder

USER_KEY = "odk_user_0123456789abcdef"
ADMIN_KEY = "odk_admin_0123456789abcdef"
KEY_ENV = {"AUTHORIZATION_APIKEY": USER_KEY, "ONDEMAND_ADMIN_KEY": ADMIN_KEY}

ProxyFactory = Callable[..., BackgroundServer]
FAST_EMULATOR = {
    "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "0",
    "OLLAMA_EMULATOR_TTFT": "0",
    "OLLAMA_EMULATOR_LOAD_TIME": "0",
    "OLLAMA_EMULATOR_PULL_SECONDS": "0.05",
}


def serve_emulator(models: str) -> Iterator[tuple[Emulator, BackgroundServer]]:
    """The emulator with ``models`` present and no pacing, on loopback (for fixtures)."""
    app = create_emulator(
        EmulatorConfig.from_env({**FAST_EMULATOR, "OLLAMA_EMULATOR_MODELS": models})
    )
    with BackgroundServer(app) as server:
        yield app, server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, BackgroundServer]]:
    app = Recorder()
    with BackgroundServer(app) as server:
        yield app, server


@pytest.fixture
def start_proxy() -> Iterator[ProxyFactory]:
    """Start proxies on loopback in front of a given upstream; all stopped at the end."""
    started: list[BackgroundServer] = []

    def start(upstream: str, env: Mapping[str, str] | None = None) -> BackgroundServer:
        settings = ProxySettings.from_env(dict(KEY_ENV if env is None else env), upstream=upstream)
        server = BackgroundServer(create_app(settings), lifespan="on").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
