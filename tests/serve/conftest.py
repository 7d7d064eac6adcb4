from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ondemand.processes import free_port
from ondemand.sandbox.ollama import write_standin
from tests.cloud import stop_group

KEY = "odk_serve_test_key_0123456789"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    ollama_port: int
    pings: list[tuple[float, int]] = field(default_factory=list)

    def ping(self) -> int:
        try:
            code = httpx.get(self.url + "/ping", timeout=2).status_code
        except httpx.HTTPError:
            code = 0
        self.pings.append((time.monotonic(), code))
        return code

    def wait_ping(self, expected: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping() == expected:
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.03)
        raise AssertionError(
            f"/ping never answered {expected}; seen {sorted({c for _, c in self.pings})}\n"
            + self.log.read_text()[-3000:]
        )

    def codes(self) -> list[int]:
        """The distinct /ping answers seen, in order (0: nothing listening yet)."""
        out: list[int] = []
        for _, code in self.pings:
            if code and (not out or out[-1] != code):
                out.append(code)
        return out

    def status(self) -> dict[str, object]:
        response = httpx.get(self.url + "/ondemand/status", headers={"X-API-Key": KEY})
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def server(self) -> dict[str, object]:
        server = self.status()["server"]
        assert isinstance(server, dict)
        return server

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


Serve = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start `ondemand serve` with the emulator as its `ollama`; stopped at the end."""
    started: list[Served] = []
    standin = write_standin(tmp_path / "bin")

    def start(models: str = "llama3.2", wait: bool = True, **env: str) -> Served:
        port, ollama_port = free_port(), free_port()
        ours = ("AUTHORIZATION_", "ONDEMAND_", "OLLAMA_", "PRELOAD_")
        base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        full = {
            **base,
            "OLLAMA_BIN": str(standin),
            "OLLAMA_MODELS": str(tmp_path / "models"),
            "OLLAMA_EMULATOR_MODELS": "llama3.2,nomic-embed-text=embed",
            "OLLAMA_EMULATOR_LOAD_TIME": "0.05",
            "OLLAMA_EMULATOR_PULL_SECONDS": "0.2",
            "OLLAMA_EMULATOR_TTFT": "0",
            "OLLAMA_PRELOAD_MODELS": models,
            "AUTHORIZATION_APIKEY": KEY,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
            "ONDEMAND_DRAIN_TIMEOUT": "10",
            **env,
        }
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ondemand", "serve"],
                env=full,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        served = Served(proc, f"http://127.0.0.1:{port}", log, ollama_port)
        started.append(served)
        if wait:
            deadline = time.monotonic() + 20
            while served.ping() == 0:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
        return served

    yield start
    for served in started:
        # The whole group: a test that killed the server must not leave its Ollama behind.
        stop_group(served.proc)
