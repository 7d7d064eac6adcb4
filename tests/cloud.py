"""The sandbox cloud in tests: a client of its emulated OVH API and the checks that no app
process outlives a test. The fixtures that start sandboxes are in tests/conftest.py."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from ondemand.sandbox.apps import AppProcess
from ondemand.sandbox.server import Sandbox, SandboxServer

T = TypeVar("T")
APP_KEY = "odk_sandbox_app_key_0123456789"
FAST_APPS = {
    "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "0",
    "OLLAMA_EMULATOR_TTFT": "0",
    "OLLAMA_EMULATOR_LOAD_TIME": "0",
    "OLLAMA_EMULATOR_PULL_SECONDS": "0.05",
    "ONDEMAND_DRAIN_TIMEOUT": "5",
}


def stop_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop the process group ``proc`` leads (a server and its Ollama): SIGTERM, then
    SIGKILL if it has not exited within ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


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


def wait(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 30) -> T:
    """Poll ``read`` until ``done`` holds; the last value seen is in the failure."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {timeout}s; last seen: {value}")
        time.sleep(0.05)
        value = read()
    return value


StartSandbox = Callable[..., tuple[SandboxServer, Ovh]]


def use_ovh_cli(
    running: SandboxServer, monkeypatch: pytest.MonkeyPatch, cwd: Path, **env: str
) -> None:
    """The environment a user's shell has for the CLI against the sandbox's OVH: its API
    and operator token, the image, 30 s to be ready, ``env`` on top, none of the keys,
    config or Actions variables of the machine running the tests, in ``cwd``."""
    monkeypatch.chdir(cwd)
    for name in ("ONDEMAND_API_KEY", "ONDEMAND_ADMIN_KEY", "ONDEMAND_CONFIG", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    settings = {
        "ONDEMAND_PROVIDER": "ovh",
        "OVH_AI_API_URL": running.ovh_url,
        "OVH_AI_TOKEN": running.sandbox.operator_token,
        "ONDEMAND_IMAGE": "registry.example.com/team/ollama-ondemand:1.4.0",
        "ONDEMAND_TIMEOUT": "30s",
        **env,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
