"""RunPod's bad days in the sandbox: workers without capacity (throttled) and workers whose
server crashes again and again (unhealthy), as the gateway and the gauges show them."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cloud import StartSandbox, group_alive, wait
from tests.sandbox.runpod_client import RunPod


def test_throttled_workers_never_start_until_the_pools_widen(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox(no_worker_wait=1, faults={"runpod": {"throttled": 1}})
    runpod = RunPod(running)
    endpoint = runpod.create_endpoint(workers={"min": 0, "max": 1, "idleTimeout": 60})
    started = time.monotonic()
    answer = runpod.gateway(endpoint, "/api/tags")
    assert (answer.status_code, answer.json()) == (400, {"error": "no workers available"})
    assert time.monotonic() - started >= 0.9
    (worker,) = runpod.workers(endpoint["id"])["workers"]
    assert worker["status"] == "THROTTLED"
    assert (worker["gpuCount"], worker["gpuTypeId"], worker["uptimeSeconds"]) == (0, None, None)
    assert runpod.health(endpoint["id"])["workers"]["throttled"] == 1
    assert running.sandbox.runner.processes == {}
    assert runpod.http.get("/v2/serverless/" + endpoint["id"]).status_code == 200

    # Wider pools are a new release: the throttled worker is replaced by one that runs.
    wider = {"gpu": {"pools": ["ADA_24", "AMPERE_24"]}, "workers": {"min": 1}}
    assert runpod.http.patch(f"/v2/serverless/{endpoint['id']}", json=wider).status_code == 200
    (worker,) = runpod.wait_workers(endpoint["id"], lambda s: s["idle"] == 1)["workers"]
    assert worker["gpuTypeId"] == "NVIDIA GeForce RTX 4090"
    assert runpod.gateway(endpoint, "/api/tags").status_code == 200
    runpod.close()


def test_crashing_workers_loop_unhealthy(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox(no_worker_wait=1, faults={"runpod": {"crash": 1}})
    runpod = RunPod(running)
    endpoint = runpod.create_endpoint(workers={"min": 1, "max": 1, "idleTimeout": 60})
    summary = runpod.wait_workers(endpoint["id"], lambda s: s["unhealthy"] == 1)["summary"]
    assert summary["total"] == 1
    (listed,) = runpod.apps("worker")
    assert "exited with status 2" in listed["detail"]
    # Started again and again: every run of its server leaves a banner in its log.
    wait(lambda: Path(listed["log"]).read_text().count("=== sandbox:"), lambda runs: runs >= 3)
    assert runpod.health(endpoint["id"])["workers"]["unhealthy"] == 1
    answer = runpod.gateway(endpoint, "/api/tags")
    assert answer.json() == {"error": "no workers available"}

    stop = runpod.http.patch(
        f"/v2/serverless/{endpoint['id']}", json={"workers": {"min": 0, "max": 0}}
    )
    assert stop.status_code == 200
    runpod.wait_workers(endpoint["id"], lambda s: s["total"] == 0)
    pids = [a["pid"] for a in runpod.apps("worker") if a["pid"]]
    assert all(not group_alive(pid) for pid in pids)
    # The fault was used up: the next worker runs.
    again = {"workers": {"min": 1, "max": 1}}
    assert runpod.http.patch(f"/v2/serverless/{endpoint['id']}", json=again).status_code == 200
    runpod.wait_workers(endpoint["id"], lambda s: s["idle"] == 1)
    assert runpod.gateway(endpoint, "/api/tags").status_code == 200
    runpod.close()
