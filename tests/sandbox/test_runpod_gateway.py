"""The emulated load balancer: keys, scale from zero, routing, streaming, scale down, and
the readiness rules its health probe applies. Workers are real ``ondemand serve``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud import APP_KEY, StartSandbox, wait
from tests.sandbox.runpod_client import LB_ENV, RunPod


@pytest.fixture
def runpod(start_sandbox: StartSandbox) -> Iterator[RunPod]:
    running, _ = start_sandbox(no_worker_wait=20)
    client = RunPod(running)
    yield client
    client.close()


def test_keys_and_refusals_before_any_worker(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox()
    runpod = RunPod(running)
    endpoint = runpod.create_endpoint(workers={"min": 0, "max": 0})
    url = endpoint["requestUrls"]["base"] + "/api/tags"
    unauthorized = runpod.plain.get(url, headers={"X-API-Key": APP_KEY})
    assert unauthorized.status_code == 401
    assert "Bearer" in unauthorized.json()["error"]
    assert runpod.plain.get(url, headers=running.read_headers).status_code == 403
    started = time.monotonic()
    none = runpod.gateway(endpoint, "/api/tags")
    assert (none.status_code, none.json()) == (400, {"error": "no workers available"})
    assert time.monotonic() - started < 5  # max 0: at once, not after the wait
    too_big = runpod.gateway(endpoint, "/api/chat", "POST", content=b"x" * (30_000_001))
    assert too_big.status_code == 413
    runpod.faults({"http": [{"route": "/lb/*/api/tags", "status": 503}]})
    unavailable = runpod.gateway(endpoint, "/api/tags")
    assert (unavailable.status_code, set(unavailable.json())) == (503, {"error"})
    assert runpod.workers(endpoint["id"])["summary"]["total"] == 0
    assert running.sandbox.runner.processes == {}
    runpod.close()


def test_a_request_scales_from_zero_and_is_routed(runpod: RunPod) -> None:
    endpoint = runpod.create_endpoint(workers={"min": 0, "max": 1, "idleTimeout": 1})
    answer = runpod.gateway(endpoint, "/api/tags")
    assert answer.status_code == 200, answer.text
    assert "llama3.2:latest" in answer.text
    # The gateway counts the request done just after its last byte reached the client.
    deadline = time.monotonic() + 5
    while True:
        (worker,) = runpod.workers(endpoint["id"])["workers"]
        if worker["status"] == "IDLE" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.headers["x-runpod-worker-id"] == worker["id"]
    assert worker["status"] == "IDLE"
    assert worker["gpuTypeId"] == "NVIDIA GeForce RTX 4090"
    assert worker["isStale"] is False
    health = runpod.health(endpoint["id"])
    assert health["workers"]["ready"] == 1
    assert health["jobs"]["completed"] == 1
    (listed,) = runpod.apps("worker")
    assert listed["id"] == worker["id"]
    assert listed["pid"] is not None

    # The RunPod key is the gateway's: it never reaches the worker, whose own key is X-API-Key.
    only_runpod_key = runpod.plain.get(
        endpoint["requestUrls"]["base"] + "/api/tags",
        headers={"Authorization": f"Bearer {runpod.key}"},
    )
    assert only_runpod_key.status_code == 401
    assert only_runpod_key.json()["error"].startswith("missing API key")

    # Idle for workers.idleTimeout (1 s) above workers.min (0): the worker stops.
    runpod.wait_workers(endpoint["id"], lambda s: s["total"] == 0, timeout=15)
    wait(lambda: runpod.apps("worker"), lambda apps: apps == [])


def test_streams_pass_through_chunk_by_chunk(runpod: RunPod) -> None:
    env = {**LB_ENV, "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "20"}
    endpoint = runpod.create_endpoint(env=env)
    body = {"model": "llama3.2", "prompt": "hi", "options": {"num_predict": 12}}
    arrivals: list[float] = []
    lines: list[dict[str, object]] = []
    with runpod.plain.stream(
        "POST",
        endpoint["requestUrls"]["base"] + "/api/generate",
        headers={"Authorization": f"Bearer {runpod.key}", "X-API-Key": APP_KEY},
        json=body,
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-runpod-worker-id"]
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                lines.append(json.loads(line))
    assert lines[-1]["done"] is True
    assert len(lines) >= 5
    # 12 tokens at 20/s: the first lines arrive well before the last, not all at once.
    assert arrivals[-1] - arrivals[0] > 0.25


def test_unexposed_or_implicit_ports_leave_workers_never_ready(start_sandbox: StartSandbox) -> None:
    running, _ = start_sandbox(no_worker_wait=1.5)
    runpod = RunPod(running)
    implicit = {"AUTHORIZATION_APIKEY": APP_KEY, "PORT": "11434"}  # no PORT_HEALTH
    endpoint = runpod.create_endpoint(env=implicit, workers={"min": 1, "max": 1})
    (worker,) = runpod.wait_workers(endpoint["id"], lambda s: s["total"] == 1)["workers"]
    # The server runs (and would answer), but the probe never finds it.
    (listed,) = wait(lambda: runpod.apps("worker"), lambda apps: apps[0]["pid"] is not None)
    time.sleep(1.0)
    assert runpod.workers(endpoint["id"])["workers"][0]["status"] == "INITIALIZING"
    health = runpod.health(endpoint["id"])["workers"]
    assert (health["ready"], health["initializing"]) == (0, 1)
    started = time.monotonic()
    answer = runpod.gateway(endpoint, "/api/tags")
    assert (answer.status_code, answer.json()) == (400, {"error": "no workers available"})
    assert time.monotonic() - started >= 1.4
    assert runpod.health(endpoint["id"])["jobs"]["failed"] == 1

    # Set both ports explicitly and expose the port: a new release, and a worker that is ready.
    fixed = runpod.http.patch(f"/v2/serverless/{endpoint['id']}", json={"env": LB_ENV})
    assert fixed.status_code == 200
    ready = runpod.wait_workers(endpoint["id"], lambda s: s["idle"] == 1)
    assert ready["workers"][0]["id"] != worker["id"]
    assert ready["endpointVersion"] == 2
    assert runpod.gateway(endpoint, "/api/tags").status_code == 200
    unexposed = runpod.http.patch(f"/v2/serverless/{endpoint['id']}", json={"ports": ["22/tcp"]})
    assert unexposed.status_code == 200
    runpod.wait_workers(endpoint["id"], lambda s: s["initializing"] == 1 and s["idle"] == 0)
    assert listed["log"].endswith("serve.log")
    runpod.close()


def test_workers_min_keeps_workers_and_zero_max_stops_them(runpod: RunPod) -> None:
    endpoint = runpod.create_endpoint(workers={"min": 1, "max": 2, "idleTimeout": 1})
    runpod.wait_workers(endpoint["id"], lambda s: s["idle"] == 1)
    time.sleep(0.5)  # idle longer than idleTimeout, but min is 1
    assert runpod.workers(endpoint["id"])["summary"]["total"] == 1
    stop = runpod.http.patch(
        f"/v2/serverless/{endpoint['id']}", json={"workers": {"min": 0, "max": 0}}
    )
    assert stop.status_code == 200
    runpod.wait_workers(endpoint["id"], lambda s: s["total"] == 0)
    assert runpod.gateway(endpoint, "/api/tags").json() == {"error": "no workers available"}
    assert runpod.http.delete(f"/v2/serverless/{endpoint['id']}").status_code == 204


def test_a_network_volume_caches_models_for_the_next_worker(runpod: RunPod) -> None:
    volume = runpod.http.post(
        "/v2/network-volumes", json={"name": "models", "size": 20, "dataCenter": "EU-RO-1"}
    ).json()
    env = {**LB_ENV, "OLLAMA_PRELOAD_MODELS": "qwen3:0.6b"}
    endpoint = runpod.create_endpoint(
        env=env, networkVolumes=[volume["id"]], workers={"min": 0, "max": 1, "idleTimeout": 1}
    )
    first = runpod.gateway(endpoint, "/api/tags")
    assert "qwen3:0.6b" in first.text
    first_worker = first.headers["x-runpod-worker-id"]
    (worker,) = runpod.workers(endpoint["id"])["workers"]
    assert worker["dataCenterId"] == "EU-RO-1"
    runpod.wait_workers(endpoint["id"], lambda s: s["total"] == 0)

    second = runpod.gateway(endpoint, "/api/tags")
    assert second.status_code == 200
    assert second.headers["x-runpod-worker-id"] != first_worker
    (listed,) = runpod.apps("worker")
    assert "/volumes/" + volume["id"] in listed["models"]
    log = wait(lambda: Path(listed["log"]).read_text(), lambda text: "ready" in text)
    assert "qwen3:0.6b is in the model cache: not pulled" in log
