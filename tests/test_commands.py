"""`ondemand proxy` and `ondemand sandbox` as real processes: start, serve, stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ondemand.processes import free_port
from ondemand.serving import bind
from tests.conftest import ADMIN_KEY, USER_KEY


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHORIZATION_", "ONDEMAND_"))}
    env.update(extra)
    return env


def _wait(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    """`ondemand sandbox` as a process; yields the OLLAMA_HOST it prints (its /ollama)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "sandbox", "--models", "llama3.2", "--ttft", "0",
         "--state-dir", str(tmp_path / "sandbox")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
    url = lines["OLLAMA_HOST"]
    assert url == lines["ONDEMAND_SANDBOX_URL"] + "/ollama", lines
    _wait(url + "/", proc)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    proc.communicate()


def test_sandbox_prints_ollama_host_and_serves_the_emulator(sandbox: str) -> None:
    tags = httpx.get(sandbox + "/api/tags").json()
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest"]


def test_proxy_command_serves_and_stops_cleanly_on_sigterm(sandbox: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "proxy", "--upstream", sandbox, "--host", "127.0.0.1",
         "--port", str(port)],
        env=_env(AUTHORIZATION_APIKEY=USER_KEY, ONDEMAND_ADMIN_KEY=ADMIN_KEY),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/ping", proc)
    assert httpx.get(url + "/ping").status_code == 200
    answer = httpx.post(
        url + "/api/chat",
        headers={"X-API-Key": USER_KEY},
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
    )
    assert answer.status_code == 200
    assert answer.json()["done"] is True
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    _, stderr = proc.communicate()
    assert f"proxy listening on http://127.0.0.1:{port}" in stderr
    assert USER_KEY not in stderr
    assert ADMIN_KEY not in stderr


def test_proxy_command_without_keys_refuses_to_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondemand", "proxy", "--port", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no API key is configured, so the proxy refuses to start" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_proxy_command_reports_a_taken_port(sandbox: str, workers: str) -> None:
    holder = bind("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ondemand", "proxy", "--upstream", sandbox,
             "--host", "127.0.0.1", "--port", str(port)],
            env=_env(AUTHORIZATION_APIKEY=USER_KEY, ONDEMAND_PROXY_WORKERS=workers),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        holder.close()
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
