"""Emulated RunPod pods: the observed lifecycle, the public HTTP proxy in front of the real
server, and the pod faults (zero GPUs on resume, a create answered 500)."""

from __future__ import annotations

import re

import httpx

from tests.cloud import APP_KEY, StartSandbox, group_alive, wait
from tests.sandbox.runpod_client import RunPod, pod_body, problem

KEY = {"Authorization": f"Bearer {APP_KEY}"}


def test_pod_lifecycle_and_proxy(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox()
    runpod = RunPod(running)
    created = runpod.create_pod()
    pod_id = created["id"]
    assert re.fullmatch(r"[a-z0-9]{14}", pod_id)
    assert created["status"] == "PROVISIONING"
    assert created["actions"] == ["stop", "terminate"]
    assert created["runtime"] is None
    assert created["gpu"] == {"id": "NVIDIA L4", "count": 1}
    assert (created["cloud"], created["dataCenterId"], created["mounts"]) == (
        "SECURE",
        "US-KS-2",
        {},
    )
    assert created["cost"] > 0
    proxy = runpod.proxy_url(pod_id, 11434)
    assert proxy == f"{running.url}/runpod/proxy/{pod_id}-11434"
    assert runpod.plain.get(proxy + "/api/tags", headers=KEY).status_code == 502

    up = runpod.wait_pod(pod_id, "RUNNING")
    assert up["actions"] == ["stop", "restart", "terminate"]
    ports = {p["private"]: p for p in up["runtime"]["ports"]}
    assert ports[11434] == {"private": 11434, "public": None, "type": "http", "ip": None}
    assert isinstance(ports[22]["public"], int)
    assert up["startedAt"] is not None

    # RUNNING is the container, not the service: 502 until the server listens, then 503
    # until its Ollama does.
    seen = wait(
        lambda: runpod.plain.get(proxy + "/api/tags", headers=KEY),
        lambda r: r.status_code not in (502, 503),
    )
    assert seen.status_code == 200, seen.text
    assert "llama3.2:latest" in seen.text
    assert runpod.plain.get(proxy + "/api/tags").status_code == 401  # the pod's own key
    assert runpod.plain.get(runpod.proxy_url(pod_id, 8888) + "/").status_code == 502
    assert runpod.plain.get(runpod.proxy_url("nope", 11434) + "/").status_code == 404
    (listed,) = runpod.apps("pod")
    pid = listed["pid"]

    assert problem(runpod.action(pod_id, "reset"), 422)
    locked = runpod.http.patch(f"/v2/pods/{pod_id}", json={"locked": True, "name": "renamed"})
    assert (locked.json()["name"], locked.json()["actions"]) == ("renamed", ["terminate"])
    assert "locked" in problem(runpod.action(pod_id, "stop"), 409)["detail"]
    runpod.http.patch(f"/v2/pods/{pod_id}", json={"locked": False})

    stopped = runpod.action(pod_id, "stop")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "EXITED"
    assert (stopped.json()["cost"], stopped.json()["runtime"]) == (0.0, None)
    assert stopped.json()["actions"] == ["start", "terminate"]
    assert runpod.plain.get(proxy + "/api/tags", headers=KEY).status_code == 502
    wait(lambda: group_alive(pid), lambda alive: not alive)
    assert "EXITED" in problem(runpod.action(pod_id, "restart"), 409)["detail"]

    # The GPU was rented meanwhile: the start is refused and the pod stays stopped.
    runpod.faults({"zero_gpus": 1})
    refused = problem(runpod.action(pod_id, "start"), 400)
    assert "not enough free GPUs" in refused["detail"]
    assert runpod.pod(pod_id)["status"] == "EXITED"
    started = runpod.action(pod_id, "start")
    assert started.json()["status"] == "PROVISIONING"
    runpod.wait_pod(pod_id, "RUNNING")
    assert runpod.action(pod_id, "restart").json()["status"] == "STARTING"
    runpod.wait_pod(pod_id, "RUNNING")
    # Started again while its server still drains from the stop: it comes back all the same.
    wait(lambda: runpod.plain.get(proxy + "/api/tags", headers=KEY), lambda r: r.status_code == 200)
    assert runpod.action(pod_id, "stop").json()["status"] == "EXITED"
    assert runpod.action(pod_id, "start").status_code == 200
    runpod.wait_pod(pod_id, "RUNNING")
    again = wait(
        lambda: runpod.plain.get(proxy + "/api/tags", headers=KEY),
        lambda r: r.status_code not in (502, 503),
    )
    assert again.status_code == 200

    terminated = runpod.action(pod_id, "terminate")
    assert (terminated.status_code, terminated.content) == (204, b"")
    assert runpod.http.get("/v2/pods").json() == {"pods": []}
    wait(lambda: runpod.http.get(f"/v2/pods/{pod_id}").status_code, lambda code: code == 404)
    assert runpod.apps("pod") == []
    runpod.close()


def test_a_pod_create_answered_500_still_creates_the_pod(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox(faults={"runpod": {"created_then_500": 1}})
    runpod = RunPod(running)
    assert problem(runpod.http.post("/v2/pods", json=pod_body(name="half")), 500)
    (listed,) = runpod.http.get("/v2/pods").json()["pods"]
    assert listed["name"] == "half"
    assert runpod.http.delete(f"/v2/pods/{listed['id']}").status_code == 204
    assert runpod.http.get("/v2/pods").json() == {"pods": []}
    runpod.close()


def test_the_proxy_gives_up_with_524(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox(pod_proxy_timeout=0.5)
    runpod = RunPod(running)
    env = {"PORT": "11434", "AUTHORIZATION_APIKEY": APP_KEY, "OLLAMA_EMULATOR_TTFT": "3"}
    pod = runpod.create_pod(env=env)
    runpod.wait_pod(pod["id"], "RUNNING")
    proxy = runpod.proxy_url(pod["id"], 11434)
    wait(lambda: runpod.plain.get(proxy + "/api/tags", headers=KEY).status_code, lambda s: s == 200)
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    slow = runpod.plain.post(proxy + "/api/generate", headers=KEY, json=body)
    assert slow.status_code == 524
    runpod.close()


def test_unknown_pods_are_404(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox()
    runpod = RunPod(running)
    assert problem(runpod.http.get("/v2/pods/nope"), 404)["detail"] == "pod nope not found"
    assert problem(runpod.action("nope", "start"), 404)
    assert problem(runpod.http.delete("/v2/pods/nope"), 404)
    assert httpx.get(running.url + "/runpod/v1/pods", trust_env=False).status_code == 404
    runpod.close()
