from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.sandbox.apps import AppProcess
from ondemand.sandbox.ollama import Emulator, EmulatorConfig, create_app
from ondemand.sandbox.server import Sandbox, SandboxServer, sandbox_server
from ondemand.serving import BackgroundServer

Serve = Callable[..., tuple[Emulator, str]]


def fast_config(**fields: Any) -> EmulatorConfig:
    """No pacing, no load time: tests that measure time set their own values."""
    config = EmulatorConfig(tokens_per_second=0.0, ttft=0.0, load_time=0.0, pull_seconds=0.05)
    for name, value in fields.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start emulators on loopback; all stopped at the end of the test."""
    servers: list[BackgroundServer] = []

    def start(config: EmulatorConfig | None = None, **fields: Any) -> tuple[Emulator, str]:
        app = create_app(config if config is not None else fast_config(**fields))
        server = BackgroundServer(app).start()
        servers.append(server)
        return app, server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def _shared() -> Iterator[tuple[Emulator, str]]:
    app = create_app(fast_config())
    with BackgroundServer(app) as server:
        yield app, server.url


@pytest.fixture
def emulator(_shared: tuple[Emulator, str]) -> tuple[Emulator, str]:
    """One server for the session, put back to a fresh ``fast_config()`` for every test."""
    app, url = _shared
    fresh = fast_config()
    for field in dataclasses.fields(fresh):
        setattr(app.config, field.name, getattr(fresh, field.name))
    app.reset()
    return app, url


# -- the sandbox (emulated clouds) --------------------------------------------------------

APP_KEY = "odk_sandbox_app_key_0123456789"
FAST_APPS = {
    "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "0",
    "OLLAMA_EMULATOR_TTFT": "0",
    "OLLAMA_EMULATOR_LOAD_TIME": "0",
    "OLLAMA_EMULATOR_PULL_SECONDS": "0.05",
    "ONDEMAND_DRAIN_TIMEOUT": "5",
}


def group_alive(pgid: int) -> bool:
    """Whether a live process is left in the group an app server led (itself, its Ollama).
    Zombies do not count: an orphan's parent, not the sandbox, reaps it."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Ovh:
    """A test client of the emulated AI API, with the waits the tests need."""

    def __init__(self, running: SandboxServer) -> None:
        self.running = running
        self.http = httpx.Client(
            base_url=running.ovh_url, headers=running.headers, timeout=10, trust_env=False
        )

    def create(self, **spec: Any) -> dict[str, Any]:
        body = {"image": "ollama-ondemand:test", **spec}
        response = self.http.post("/v1/app", json=body)
        assert response.status_code == 200, response.text
        app: dict[str, Any] = response.json()
        return app

    def get(self, app_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/app/{app_id}")
        assert response.status_code == 200, response.text
        app: dict[str, Any] = response.json()
        return app

    def state(self, app_id: str) -> str:
        return str(self.get(app_id)["status"]["state"])

    def wait(self, app_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            app = self.get(app_id)
            state = app["status"]["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in states:
                return app
            time.sleep(0.02)
        raise AssertionError(f"app {app_id} never reached {states}; seen {seen}")

    def wait_gone(self, app_id: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http.get(f"/v1/app/{app_id}").status_code == 404:
                return
            time.sleep(0.02)
        raise AssertionError(f"app {app_id} was never deleted")

    def close(self) -> None:
        self.http.close()


@dataclass
class Launched:
    """Every app server a sandbox started during a test, to prove none is left."""

    pids: list[int] = dataclasses.field(default_factory=list)

    def spy_on(self, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        runner = sandbox.runner
        launch = runner.launch

        def recording(key: str, **options: Any) -> AppProcess:
            process = launch(key, **options)
            self.pids.append(process.pid)
            return process

        monkeypatch.setattr(runner, "launch", recording)

    def assert_all_gone(self) -> None:
        left = [pid for pid in self.pids if group_alive(pid)]
        assert not left, f"app processes left behind: {left}"


StartSandbox = Callable[..., tuple[SandboxServer, Ovh]]


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
