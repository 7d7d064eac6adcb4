"""The OVH emulator's apps end to end: real `ondemand serve` processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from ondemand.processes import free_port
from ondemand.sandbox.ollama import write_standin
from ondemand.sandbox.server import SandboxServer, sandbox_server
from tests.cloud import APP_KEY, FAST_APPS, Ovh, StartSandbox, group_alive

NEW_KEY = "odk_sandbox_new_key_9876543210"
_ONCE = {"stream": False}


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/api/chat",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
        timeout=10,
        trust_env=False,
    )


def _wait_warm(url: str, timeout: float = 20) -> None:
    """RUNNING comes with /ping's 204 (warming), as a readiness probe counts it; warm is 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/ping", trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the app never became warm"
        time.sleep(0.02)


def _states(app: dict[str, object]) -> list[str]:
    status = app["status"]
    assert isinstance(status, dict)
    return [entry["state"] for entry in status["history"]]


def _pid(running: SandboxServer, app_id: str) -> int:
    process = running.sandbox.runner.get(app_id)
    assert process is not None
    return process.pid


def test_create_walks_to_running_serves_stops_and_starts_on_the_same_url(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    running, client = ovh
    env = [
        {"name": "AUTHORIZATION_APIKEY", "value": APP_KEY},
        {"name": "OLLAMA_PRELOAD_MODELS", "value": "qwen3:0.6b"},
        {"name": "DROPPED", "value": "x"},
    ]
    created = client.create(name="walk", envVars=env, labels={"team": "ml"})
    app_id = created["id"]
    assert created["spec"]["name"] == "walk"
    assert created["spec"]["image"] == "ollama-ondemand:test"
    assert created["spec"]["envVars"] == env
    assert created["spec"]["labels"] == {"team": "ml", "ovh/id": app_id, "ovh/type": "app"}
    assert created["status"]["state"] == "QUEUED"
    assert _states(created) == ["QUEUED"]
    url = created["status"]["url"]
    assert url.startswith("http://127.0.0.1:")
    datetime.fromisoformat(created["createdAt"].replace("Z", "+00:00"))

    app = client.wait(app_id, "RUNNING")
    status = app["status"]
    assert _states(app) == ["QUEUED", "INITIALIZING", "SCALING", "RUNNING"]
    dates = [entry["date"] for entry in status["history"]]
    assert dates == sorted(dates)
    assert status["lastTransitionDate"] == dates[-1]
    assert status["availableReplicas"] == 1
    assert status["info"]["code"] == "APP_RUNNING"
    assert status["url"] == url
    assert httpx.get(url + "/ping", trust_env=False).status_code in (200, 204)
    _wait_warm(url)
    answer = _chat(url, APP_KEY)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True
    first_pid = _pid(running, app_id)

    # The new environment applies at the next start, as on the platform.
    new_env = [{"name": "AUTHORIZATION_APIKEY", "value": NEW_KEY}, {"name": "DROPPED", "value": ""}]
    patch = {"url": "ollama-ondemand:v2", "envVars": new_env}
    updated = client.http.put(f"/v1/app/{app_id}", json=patch)
    assert updated.status_code == 200, updated.text
    assert updated.json()["spec"]["image"] == "ollama-ondemand:v2"
    names = {e["name"]: e["value"] for e in updated.json()["spec"]["envVars"]}
    assert names == {"AUTHORIZATION_APIKEY": NEW_KEY, "OLLAMA_PRELOAD_MODELS": "qwen3:0.6b"}

    stop = client.http.put(f"/v1/app/{app_id}/stop")
    assert (stop.status_code, stop.content) == (204, b"")
    assert client.state(app_id) == "STOPPING"
    stopped = client.wait(app_id, "STOPPED")
    assert stopped["status"]["availableReplicas"] == 0
    assert not group_alive(first_pid)
    assert client.http.put(f"/v1/app/{app_id}/stop").status_code == 400

    assert client.http.put(f"/v1/app/{app_id}/start").status_code == 204
    again = client.wait(app_id, "RUNNING")
    assert again["status"]["url"] == url
    assert _states(again)[-4:] == ["QUEUED", "INITIALIZING", "SCALING", "RUNNING"]
    assert _states(again)[4:6] == ["STOPPING", "STOPPED"]
    _wait_warm(url)
    assert _chat(url, NEW_KEY).status_code == 200
    assert _chat(url, APP_KEY).status_code == 401
    # The log reaches the API through a pipe: a busy machine may lag it a little.
    deadline = time.monotonic() + 10
    while True:
        log = client.http.get(f"/v1/app/{app_id}/log", params={"tail": 200}).text
        if "qwen3:0.6b is in the model cache: not pulled" in log or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "qwen3:0.6b is in the model cache: not pulled" in log

    refused = client.http.delete(f"/v1/app/{app_id}")
    assert refused.status_code == 400
    assert "force=true" in refused.json()["message"]
    second_pid = _pid(running, app_id)
    assert client.http.delete(f"/v1/app/{app_id}", params={"force": "true"}).status_code == 204
    assert client.state(app_id) == "DELETING"
    client.wait_gone(app_id)
    assert not group_alive(second_pid)
    assert client.http.get(f"/v1/app/{app_id}").json() == {"message": f"app {app_id} not found"}


def test_an_exiting_server_makes_the_app_failed_with_its_log(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    _, client = ovh
    app = client.wait(client.create()["id"], "FAILED")  # no key: the server refuses to start
    info = app["status"]["info"]
    assert info["code"] == "APP_FAILED"
    assert "exited with status 2" in info["message"]
    assert "no API key is configured" in info["message"]
    assert _states(app)[-1] == "FAILED"
    assert client.http.delete(f"/v1/app/{app['id']}").status_code == 204


def test_a_probe_that_never_succeeds_fails_the_deploy_at_its_deadline(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    running, client = ovh
    created = client.create(
        envVars=[{"name": "AUTHORIZATION_APIKEY", "value": APP_KEY}],
        probe={"path": "/api/tags"},  # needs a key: 401 to the probe
        deploymentStrategy={"progressDeadlineSeconds": 1},
    )
    client.wait(created["id"], "SCALING")
    pid = _pid(running, created["id"])
    app = client.wait(created["id"], "FAILED")
    assert "did not become ready within 1s" in app["status"]["info"]["message"]
    assert "answered 401" in app["status"]["info"]["message"]
    assert not group_alive(pid)


def test_apps_resume_after_a_sandbox_restart(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    state_dir = tmp_path / "restarted"
    key = [{"name": "AUTHORIZATION_APIKEY", "value": APP_KEY}]
    with sandbox_server(state_dir, transition_seconds=0.05, app_env=FAST_APPS) as running:
        client = Ovh(running)
        up = client.wait(client.create(name="up", envVars=key)["id"], "RUNNING")
        down = client.create(name="down", envVars=key)
        client.wait(down["id"], "RUNNING")
        assert client.http.put(f"/v1/app/{down['id']}/stop").status_code == 204
        client.wait(down["id"], "STOPPED")
        pid = _pid(running, up["id"])
        client.close()
    assert not group_alive(pid)

    again, client = start_sandbox(state_dir)
    assert again.url != running.url
    resumed = client.wait(up["id"], "RUNNING")
    assert resumed["status"]["url"] == up["status"]["url"]
    assert _states(resumed) == ["QUEUED", "INITIALIZING", "SCALING", "RUNNING"] * 2
    assert resumed["spec"] == up["spec"]
    _wait_warm(resumed["status"]["url"])  # RUNNING comes as soon as /ping answers 204
    answer = _chat(resumed["status"]["url"], APP_KEY)
    assert answer.status_code == 200, answer.text
    assert client.state(down["id"]) == "STOPPED"
    assert client.get(down["id"])["status"]["url"] == down["status"]["url"]


def test_a_restart_stops_the_app_server_a_dead_sandbox_left(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    state_dir = tmp_path / "orphaned"
    parked = {"ovh": {"slow": {"seconds": {"QUEUED": 60}}}}
    with sandbox_server(state_dir, faults=parked) as running:
        client = Ovh(running)
        app = client.create(envVars=[{"name": "AUTHORIZATION_APIKEY", "value": APP_KEY}])
        client.close()
    port = int(app["status"]["url"].rsplit(":", 1)[1])
    # What a sandbox killed outside Linux leaves: its app's server, still serving.
    orphan = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "serve"],
        env={**os.environ, **FAST_APPS, "AUTHORIZATION_APIKEY": APP_KEY, "HOST": "127.0.0.1",
             "PORT": str(port), "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{free_port()}",
             "OLLAMA_BIN": str(write_standin(tmp_path / "bin"))},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_warm(app["status"]["url"])
        stored = json.loads((state_dir / "ovh" / "apps.json").read_text())
        stored["apps"][0].update(state="RUNNING", pid=orphan.pid)
        (state_dir / "ovh" / "apps.json").write_text(json.dumps(stored))

        _, client = start_sandbox(state_dir)
        assert orphan.wait(10) == 0
        assert not group_alive(orphan.pid)
        resumed = client.wait(app["id"], "RUNNING")
        assert resumed["status"]["url"] == app["status"]["url"]
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)
            orphan.wait()
