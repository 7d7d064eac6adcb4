from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ondemand.proxy import ProxySettings, create_app
from ondemand.sandbox.ollama import EmulatorConfig
from ondemand.sandbox.ollama import create_app as create_emulator
from ondemand.sandbox.ollama.app import Emulator
from ondemand.sandbox.server import SandboxServer, sandbox_server
from ondemand.serving import BackgroundServer
from tests.cloud import FAST_APPS, Launched, Ovh, StartSandbox
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


@pytest.fixture(autouse=True)
def own_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test its own state directory: the lease records 'up' writes there are per user
    and deployment name, so tests running side by side under one name would release each
    other's leases (and a developer's own records would leak in)."""
    monkeypatch.setenv("ONDEMAND_STATE_DIR", str(tmp_path_factory.mktemp("state")))


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


@pytest.fixture
def start_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StartSandbox]:
    """Start sandboxes (fast transitions, fast emulated Ollama) on loopback; all stopped at
    the end, and no app process may outlive them. Same ``state_dir`` = same sandbox state."""
    stack = contextlib.ExitStack()
    launched = Launched()

    def start(state_dir: Path | None = None, **options: Any) -> tuple[SandboxServer, Ovh]:
        settings: dict[str, Any] = {
            "transition_seconds": 0.05,
            "probe_period": 0.2,
            "stop_grace": 10.0,
            "app_env": FAST_APPS,
            **options,
        }
        running = stack.enter_context(sandbox_server(state_dir or tmp_path / "sandbox", **settings))
        launched.spy_on(running.sandbox, monkeypatch)
        client = Ovh(running)
        stack.callback(client.close)
        return running, client

    with stack:
        yield start
    launched.assert_all_gone()


@pytest.fixture
def ovh(start_sandbox: StartSandbox) -> tuple[SandboxServer, Ovh]:
    """One fresh sandbox for the test."""
    return start_sandbox()


@pytest.fixture(scope="module")
def idle_ovh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxServer, Ovh]]:
    """One sandbox shared by a module's tests that create no app (refused requests)."""
    with sandbox_server(tmp_path_factory.mktemp("idle"), transition_seconds=0.05) as running:
        client = Ovh(running)
        yield running, client
        client.close()
        assert running.sandbox.runner.processes == {}
