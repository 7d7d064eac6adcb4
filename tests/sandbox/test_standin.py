"""The stand-in ``ollama`` executable: ``serve`` on OLLAMA_HOST, client commands, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ondemand.sandbox.ollama import write_standin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def env() -> dict[str, str]:
    return {
        **os.environ,
        "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
        "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "0",
        "OLLAMA_EMULATOR_TTFT": "0",
        "OLLAMA_EMULATOR_LOAD_TIME": "0",
        "OLLAMA_EMULATOR_MODELS": "llama3.2,all-minilm=embed",
    }


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ondemand.sandbox.ollama", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = "http://" + env["OLLAMA_HOST"]
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(url + "/", timeout=0.5).text == "Ollama is running":
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"emulator did not start: {process.communicate()}")
        time.sleep(0.05)
    yield process, url
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_serve_honours_ollama_host_and_stops_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = server
    answer = httpx.post(url + "/api/generate", json={"model": "llama3.2", "prompt": "x"})
    assert answer.status_code == 200
    assert answer.text.endswith("\n")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert f"Listening on {url.removeprefix('http://')} (version 0.33.0)" in stderr


def test_standin_file_runs_the_client_commands(
    tmp_path: Path, server: tuple[subprocess.Popen[str], str], env: dict[str, str]
) -> None:
    ollama = write_standin(tmp_path / "bin")
    assert ollama == tmp_path / "bin" / "ollama"
    assert os.access(ollama, os.X_OK)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ollama), *args], env=env, capture_output=True, text=True, timeout=20, check=False
        )

    version = run("--version")
    assert (version.returncode, version.stdout) == (0, "ollama version is 0.33.0\n")
    listed = run("list")
    assert listed.returncode == 0
    rows = [line.split()[0] for line in listed.stdout.splitlines()]
    assert rows == ["NAME", "llama3.2:latest", "all-minilm:latest"]
    assert run("run", "--keepalive=-1m", "llama3.2", "").returncode == 0
    assert "llama3.2:latest" in run("ps").stdout
    assert "Forever" in run("ps").stdout
    unknown = run("frobnicate")
    assert unknown.returncode == 1
    assert 'unknown command "frobnicate"' in unknown.stderr


def test_client_commands_fail_without_a_server(tmp_path: Path, env: dict[str, str]) -> None:
    ollama = write_standin(tmp_path)
    result = subprocess.run(
        [str(ollama), "list"], env=env, capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 1
    assert "could not connect to ollama server" in result.stderr
