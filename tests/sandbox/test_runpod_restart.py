"""A RunPod sandbox restarted on its state directory finds its volumes, endpoints and pods,
and what was up comes back up; and the command prints the RunPod variables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from ondemand.sandbox.server import sandbox_server
from tests.cloud import FAST_APPS, StartSandbox, group_alive
from tests.sandbox.runpod_client import RunPod


def test_state_survives_a_sandbox_restart(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    state_dir = tmp_path / "restarted"
    with sandbox_server(state_dir, transition_seconds=0.05, app_env=FAST_APPS) as running:
        runpod = RunPod(running)
        volume = runpod.http.post(
            "/v2/network-volumes", json={"name": "models", "size": 20, "dataCenter": "US-TX-3"}
        ).json()
        endpoint = runpod.create_endpoint(
            networkVolumes=[volume["id"]], workers={"min": 1, "max": 1, "idleTimeout": 60}
        )
        up = runpod.create_pod(name="up")
        down = runpod.create_pod(name="down")
        runpod.wait_pod(up["id"], "RUNNING")
        runpod.wait_pod(down["id"], "RUNNING")
        assert runpod.action(down["id"], "stop").status_code == 200
        runpod.wait_workers(endpoint["id"], lambda s: s["idle"] == 1)
        pids = [a["pid"] for a in runpod.apps("pod") + runpod.apps("worker") if a["pid"]]
        runpod.close()
    assert pids
    assert not any(group_alive(pid) for pid in pids)
    stored = json.loads((state_dir / "runpod" / "pods.json").read_text())
    assert {p["name"]: p["status"] for p in stored["pods"]} == {"up": "RUNNING", "down": "EXITED"}

    again, _ = start_sandbox(state_dir)
    runpod = RunPod(again)
    assert runpod.http.get("/v2/network-volumes").json() == {"networkVolumes": [volume]}
    resumed = runpod.http.get(f"/v2/serverless/{endpoint['id']}").json()
    assert resumed["networkVolumes"] == [volume["id"]]
    assert resumed["requestUrls"]["base"].startswith(again.url)
    assert runpod.pod(up["id"])["status"] in ("PROVISIONING", "STARTING", "RUNNING")
    runpod.wait_pod(up["id"], "RUNNING")
    assert runpod.pod(down["id"])["status"] == "EXITED"
    runpod.wait_workers(endpoint["id"], lambda s: s["idle"] == 1)
    assert runpod.gateway(resumed, "/api/tags").status_code == 200
    runpod.close()


def test_the_command_prints_the_runpod_variables(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OLLAMA_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "sandbox", "--state-dir", str(tmp_path),
         "--no-worker-wait", "2", "--pod-proxy-timeout", "5"],
        env={**base, **FAST_APPS}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline().rstrip("\n") for _ in range(8)]
    env = dict(line.split("=", 1) for line in lines)
    assert list(env) == [
        "ONDEMAND_SANDBOX_URL", "OVH_AI_API_URL", "OVH_AI_TOKEN", "OLLAMA_HOST",
        "RUNPOD_API_KEY", "RUNPOD_API_URL", "RUNPOD_ENDPOINT_BASE_URL", "RUNPOD_POD_PROXY_URL",
    ]  # fmt: skip
    url = env["ONDEMAND_SANDBOX_URL"]
    assert env["RUNPOD_API_KEY"] == "sandbox-operator"
    assert env["RUNPOD_API_URL"] == url + "/runpod"
    assert env["RUNPOD_ENDPOINT_BASE_URL"] == url + "/runpod/ai/v2"
    assert env["RUNPOD_POD_PROXY_URL"] == url + "/runpod/proxy/{pod_id}-{port}"
    listed = httpx.get(
        env["RUNPOD_API_URL"] + "/v2/serverless",
        headers={"Authorization": f"Bearer {env['RUNPOD_API_KEY']}"},
        trust_env=False,
    )
    assert listed.json() == {"endpoints": []}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    proc.communicate()
