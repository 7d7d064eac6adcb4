"""`ondemand sandbox` as a real process: what it prints, what it serves, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cloud import APP_KEY, FAST_APPS, group_alive

KEYS = ["ONDEMAND_SANDBOX_URL", "OVH_AI_API_URL", "OVH_AI_TOKEN", "OLLAMA_HOST"]


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_sandbox_left() -> Iterator[None]:
    """A test that fails half-way must not leave its sandbox (and its apps) running: the
    sandbox stops its apps on SIGTERM."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.communicate()


def _start(state_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OLLAMA_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "sandbox", "--transition-seconds", "0.05",
         "--state-dir", str(state_dir), *args],
        env={**base, **FAST_APPS, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _STARTED.append(proc)
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _, stderr = proc.communicate()
    return stderr


def test_the_command_prints_its_env_serves_apps_and_stops_them(tmp_path: Path) -> None:
    proc = _start(tmp_path / "state", ONDEMAND_SANDBOX_TOKEN="my-operator-token")
    assert proc.stdout is not None
    lines = [proc.stdout.readline().rstrip("\n") for _ in KEYS]
    env = dict(line.split("=", 1) for line in lines)
    assert list(env) == KEYS
    url = env["ONDEMAND_SANDBOX_URL"]
    assert url.startswith("http://127.0.0.1:")
    assert env["OVH_AI_API_URL"] == url + "/ovh"
    assert env["OLLAMA_HOST"] == url + "/ollama"
    assert env["OVH_AI_TOKEN"] == "my-operator-token"

    api = httpx.Client(
        base_url=env["OVH_AI_API_URL"],
        headers={"Authorization": f"Bearer {env['OVH_AI_TOKEN']}"},
        trust_env=False,
        timeout=10,
    )
    body = {"image": "x", "envVars": [{"name": "AUTHORIZATION_APIKEY", "value": APP_KEY}]}
    app_id = api.post("/v1/app", json=body).json()["id"]
    deadline = time.monotonic() + 20
    while (app := api.get(f"/v1/app/{app_id}").json())["status"]["state"] != "RUNNING":
        assert time.monotonic() < deadline, app
        time.sleep(0.05)
    assert httpx.get(app["status"]["url"] + "/ping", trust_env=False).status_code in (200, 204)
    reader = {"Authorization": "Bearer sandbox-read"}
    assert api.get("/v1/app", headers=reader).status_code == 200
    (listed,) = httpx.get(url + "/_sandbox/apps", trust_env=False).json()["apps"]
    api.close()

    stderr = _stop(proc)
    assert not group_alive(listed["pid"])
    assert "sandbox ready on " + url in stderr
    assert "'sandbox-read'" in stderr
    stored = json.loads((tmp_path / "state" / "ovh" / "apps.json").read_text())
    assert [a["state"] for a in stored["apps"]] == ["RUNNING"]  # resumed by the next sandbox


def test_json_output_and_startup_faults(tmp_path: Path) -> None:
    faults = {"ovh": {"no_capacity": 1}}
    proc = _start(tmp_path, "--json", ONDEMAND_SANDBOX_FAULTS=json.dumps(faults))
    assert proc.stdout is not None
    printed = json.loads(proc.stdout.readline())
    assert set(printed) >= set(KEYS)
    assert printed["OVH_AI_TOKEN"] == "sandbox-operator"
    assert printed["ONDEMAND_SANDBOX_STATE_DIR"] == str(tmp_path)
    seen = httpx.get(printed["ONDEMAND_SANDBOX_URL"] + "/_sandbox/faults", trust_env=False)
    assert seen.json()["ovh"]["no_capacity"] == 1
    _stop(proc)


def test_invalid_startup_faults_are_a_configuration_error(tmp_path: Path) -> None:
    proc = _start(tmp_path, ONDEMAND_SANDBOX_FAULTS='{"ovh": {"outage": 1}}')
    assert proc.wait(30) == 2
    _, stderr = proc.communicate()
    assert "cannot start the sandbox: unknown fault kind" in stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel signals orphans")
def test_apps_die_with_a_killed_sandbox(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    assert proc.stdout is not None
    env = dict(proc.stdout.readline().rstrip("\n").split("=", 1) for _ in KEYS)
    body = {"image": "x", "envVars": [{"name": "AUTHORIZATION_APIKEY", "value": APP_KEY}]}
    headers = {"Authorization": f"Bearer {env['OVH_AI_TOKEN']}"}
    httpx.post(env["OVH_AI_API_URL"] + "/v1/app", json=body, headers=headers, trust_env=False)
    deadline = time.monotonic() + 20
    pid = None
    while pid is None:
        assert time.monotonic() < deadline
        apps = httpx.get(env["ONDEMAND_SANDBOX_URL"] + "/_sandbox/apps", trust_env=False).json()
        pid = apps["apps"][0]["pid"]
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    while group_alive(pid):
        assert time.monotonic() < deadline, "the app outlived its sandbox"
        time.sleep(0.05)
