"""The `runpod` provider (a load-balancing serverless endpoint) against the sandbox's
emulated REST v2 API and gateway, over loopback HTTP: what it sends, and the lifecycle
commands as a user runs them, faults included."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.config import load_config
from ondemand.lifecycle import delete, deploy, make_provider, status
from ondemand.providers.runpod import RunpodProvider
from ondemand.sandbox.server import SandboxServer
from tests.clirun import run
from tests.cloud import StartSandbox
from tests.jobs import run_threads

IMAGE = "registry.example.com/team/ollama-ondemand:1.4.0"
USER_KEY = "odk_runpod_provider_user_key_0123"


@dataclass
class Sent:
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def bodies(self, method: str, path: str) -> list[Any]:
        return [
            json.loads(r.content) if r.content else None
            for r in self.requests
            if r.method == method and r.url.path.endswith(path)
        ]


@dataclass
class Cloud:
    running: SandboxServer
    tmp: Path
    made: list[RunpodProvider] = field(default_factory=list)

    @property
    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.running.url + "/runpod",
            headers=self.running.headers,
            timeout=10,
            trust_env=False,
        )

    def env(self, **extra: str) -> dict[str, str]:
        printed = self.running.env
        return {
            "ONDEMAND_PROVIDER": "runpod",
            **{k: v for k, v in printed.items() if k.startswith("RUNPOD_")},
            "ONDEMAND_IMAGE": IMAGE,
            "ONDEMAND_MODELS": "llama3.2",
            "ONDEMAND_TIMEOUT": "30s",
            **extra,
        }

    def provider(self, **extra: str) -> tuple[RunpodProvider, Sent, Any]:
        env = self.env(**extra)
        resolved = load_config(path=None, env=env, cwd=self.tmp)
        provider = make_provider(resolved, env)
        assert isinstance(provider, RunpodProvider)
        self.made.append(provider)
        sent = Sent()
        provider.runpod.api.http.event_hooks["request"].append(sent)
        return provider, sent, resolved

    def endpoints(self) -> list[dict[str, Any]]:
        with self.http as client:
            items: list[dict[str, Any]] = client.get("/v2/serverless").json()["endpoints"]
        return items

    def workers(self, endpoint_id: str) -> dict[str, int]:
        with self.http as client:
            summary: dict[str, int] = client.get(f"/v2/serverless/{endpoint_id}/workers").json()[
                "summary"
            ]
        return summary

    def faults(self, **document: object) -> None:
        answer = httpx.post(f"{self.running.url}/_sandbox/faults", json={"runpod": document})
        assert answer.status_code == 200, answer.text


@pytest.fixture
def cloud(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cloud]:
    running, _ = start_sandbox(no_worker_wait=3.0)
    made = Cloud(running, tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("ONDEMAND_API_KEY", "ONDEMAND_ADMIN_KEY", "ONDEMAND_CONFIG", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in made.env().items():
        monkeypatch.setenv(name, value)
    yield made
    for provider in made.made:
        provider.close()


def _up(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, str], str]:
    code, out, err = run([*args, "up"], capsys)
    assert code == 0, err
    return dict(line.split("=", 1) for line in out.splitlines()), err


# -- what goes over the wire ---------------------------------------------------------------


def test_deploy_sends_the_v2_endpoint_of_the_reference_field_by_field(cloud: Cloud) -> None:
    provider, sent, resolved = cloud.provider(ONDEMAND_API_KEY=USER_KEY)
    deployed = deploy(resolved, provider)
    assert deployed.detail == "created"
    [create] = [r for r in sent.requests if r.method == "POST"]
    assert create.url.path == "/runpod/v2/serverless"
    assert create.headers["authorization"] == f"Bearer {cloud.running.env['RUNPOD_API_KEY']}"
    body = json.loads(create.content)
    assert set(body) == {
        "name", "type", "image", "env", "ports", "disk", "gpu", "workers", "scaling",
        "flashboot", "networkVolumes", "dataCenterIds",
    }  # fmt: skip
    assert body["type"] == "LOAD_BALANCER"
    assert body["image"] == IMAGE
    # Both ports set explicitly and the port exposed, or the gateway never routes.
    assert body["env"]["PORT"] == "8080"
    assert body["env"]["PORT_HEALTH"] == "8080"
    assert body["ports"] == ["8080/http"]
    assert all(isinstance(v, str) for v in body["env"].values())
    assert body["env"]["AUTHORIZATION_APIKEY"] == USER_KEY
    assert body["env"]["OLLAMA_PRELOAD_MODELS"] == "llama3.2"
    assert body["gpu"] == {
        "pools": ["AMPERE_24"],
        "count": 1,
        "excludedTypes": ["NVIDIA RTX A5000", "NVIDIA GeForce RTX 3090"],
    }
    # Created stopped: nothing may run (or bill) until 'start'.
    assert body["workers"] == {"min": 0, "max": 0, "idleTimeout": 60}
    assert body["scaling"] == {"type": "REQUEST_COUNT", "requestCount": 100}
    assert body["flashboot"] == "FLASHBOOT"
    assert body["networkVolumes"] == []
    assert body["dataCenterIds"] == []
    [endpoint] = cloud.endpoints()
    assert endpoint["type"] == "LOAD_BALANCER"
    assert deployed.url == endpoint["requestUrls"]["base"]


def test_a_network_volume_is_created_once_and_pins_the_data_center(cloud: Cloud) -> None:
    settings = {"ONDEMAND_RUNPOD_NETWORK_VOLUME": "ollama-models@EU-RO-1"}
    provider, sent, resolved = cloud.provider(**settings)
    deploy(resolved, provider)
    [volume] = sent.bodies("POST", "/v2/network-volumes")
    assert volume == {"name": "ollama-models", "size": 50, "dataCenter": "EU-RO-1"}
    [endpoint] = sent.bodies("POST", "/v2/serverless")
    assert len(endpoint["networkVolumes"]) == 1
    assert endpoint["dataCenterIds"] == ["EU-RO-1"]
    assert endpoint["env"]["OLLAMA_MODELS"] == "/runpod-volume/ollama-models"

    provider, sent, resolved = cloud.provider(**settings)
    assert deploy(resolved, provider).detail == "unchanged"
    assert not [r for r in sent.requests if r.method != "GET"]


def test_two_jobs_creating_the_volume_at_once_keep_one_and_both_use_it(cloud: Cloud) -> None:
    settings = {"ONDEMAND_RUNPOD_NETWORK_VOLUME": "ollama-models@EU-RO-1"}
    both_looked = threading.Barrier(2)

    def hold_the_create(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/v2/network-volumes"):
            both_looked.wait(timeout=20)

    jobs = [cloud.provider(**settings) for _ in range(2)]
    for provider, _, _ in jobs:
        provider.runpod.api.http.event_hooks["request"].append(hold_the_create)
    assert run_threads(*(lambda p=p, r=r: deploy(r, p) for p, _, r in jobs)) == []
    assert sum(len(sent.bodies("POST", "/v2/network-volumes")) for _, sent, _ in jobs) == 2
    with cloud.http as client:
        [volume] = client.get("/v2/network-volumes").json()["networkVolumes"]
    [endpoint] = cloud.endpoints()
    assert endpoint["networkVolumes"] == [volume["id"]]


def test_a_new_spec_patches_the_same_endpoint_and_keeps_it_stopped(cloud: Cloud) -> None:
    provider, _, resolved = cloud.provider()
    deploy(resolved, provider)
    [before] = cloud.endpoints()
    provider, sent, resolved = cloud.provider(ONDEMAND_MODELS="llama3.2,nomic-embed-text")
    assert deploy(resolved, provider).detail == "updated"
    [patch] = sent.bodies("PATCH", f"/v2/serverless/{before['id']}")
    assert "type" not in patch
    assert "name" not in patch
    assert patch["workers"] == {"min": 0, "max": 0, "idleTimeout": 60}
    assert patch["env"]["OLLAMA_PRELOAD_MODELS"] == "llama3.2,nomic-embed-text"
    [after] = cloud.endpoints()
    assert after["id"] == before["id"]


def test_a_create_answered_500_after_creating_makes_no_duplicate(cloud: Cloud) -> None:
    cloud.faults(created_then_500=1)
    provider, sent, resolved = cloud.provider()
    deploy(resolved, provider)
    assert len(cloud.endpoints()) == 1
    assert len(sent.bodies("POST", "/v2/serverless")) == 1


# -- the lifecycle, as a user runs it ---------------------------------------------------------


def test_up_chat_through_the_gateway_status_down_delete(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    printed, err = _up(capsys)
    url, key = printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]
    [endpoint] = cloud.endpoints()
    assert url == endpoint["requestUrls"]["base"]
    assert "X-API-Key" in err
    runpod_key = cloud.running.env["RUNPOD_API_KEY"]

    gateway = {"Authorization": f"Bearer {runpod_key}"}
    chat = httpx.post(
        url + "/api/chat",
        headers={**gateway, "X-API-Key": key},
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
        timeout=30,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["done"] is True
    # The gateway wants the RunPod key; our proxy wants ours.
    assert httpx.get(url + "/api/tags", headers={"X-API-Key": key}).status_code == 401
    assert httpx.get(url + "/api/tags", headers=gateway, timeout=10).status_code == 401

    code, out, _ = run(["status", "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert report["status"] == "running"
    assert report["ready"] is True
    assert report["url"] == url
    assert "running" in report["detail"] or "idle" in report["detail"]

    # A job's cleanup leaves the endpoint to scale to zero, giving its lease back.
    code, out, _ = run(["--json", "down", "--lease", printed["ONDEMAND_LEASE_ID"]], capsys)
    assert code == 0
    result = json.loads(out)
    assert (result["stopped"], result["scales_to_zero"]) == (False, True)
    assert result["released"] == [printed["ONDEMAND_LEASE_ID"]]
    assert "share" in result
    [endpoint] = cloud.endpoints()
    assert endpoint["workers"]["max"] == 2

    code, out, _ = run(["down", "--force"], capsys)
    assert code == 0
    assert out.startswith("stopped ollama-ondemand")
    [endpoint] = cloud.endpoints()
    assert endpoint["workers"]["min"] == 0
    assert endpoint["workers"]["max"] == 0
    assert cloud.workers(endpoint["id"])["total"] == 0  # verified, not just requested

    code, out, _ = run(["down"], capsys)
    assert code == 0
    assert out.strip() == "ollama-ondemand was already stopped"
    code, out, _ = run(["delete"], capsys)
    assert code == 0
    assert "deleted" in out
    assert cloud.endpoints() == []


def test_the_key_up_hands_out_outlives_a_worker_that_scaled_to_zero(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONDEMAND_RUNPOD_IDLE_TIMEOUT", "1")
    printed, err = _up(capsys)
    url, key = printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]
    assert key.startswith("odk_run_"), err  # a per-run key, which every worker can check
    headers = {"Authorization": f"Bearer {cloud.running.env['RUNPOD_API_KEY']}", "X-API-Key": key}
    assert httpx.get(url + "/api/tags", headers=headers, timeout=10).status_code == 200
    [endpoint] = cloud.endpoints()
    deadline = time.monotonic() + 20
    while cloud.workers(endpoint["id"])["total"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cloud.workers(endpoint["id"])["total"] == 0
    # The next request of the same job cold-starts a new worker, which knows this key.
    assert httpx.get(url + "/api/tags", headers=headers, timeout=30).status_code == 200


def test_a_cleanup_never_cuts_off_another_job_and_idle_workers_stop_by_themselves(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONDEMAND_RUNPOD_IDLE_TIMEOUT", "1")
    monkeypatch.setenv("ONDEMAND_RUNPOD_WORKERS_MIN", "1")
    a, _ = _up(capsys)
    b, _ = _up(capsys)
    gateway = {"Authorization": f"Bearer {cloud.running.env['RUNPOD_API_KEY']}"}
    headers = {**gateway, "X-API-Key": b["OLLAMA_API_KEY"]}
    url = b["OLLAMA_HOST"]
    # B streams while A's cleanup runs, then pauses longer than the idle timeout.
    with httpx.stream("POST", url + "/api/generate", headers=headers, timeout=30,
                      json={"model": "llama3.2", "prompt": "hi"}) as streaming:  # fmt: skip
        lines = streaming.iter_lines()
        assert next(lines)
        code, out, err = run(["down", "--lease", a["ONDEMAND_LEASE_ID"]], capsys)
        assert code == 0, err
        assert out.startswith("ollama-ondemand: left to scale to zero: each worker stops 1s")
        assert json.loads(list(lines)[-1])["done"] is True
    [endpoint] = cloud.endpoints()
    assert (endpoint["workers"]["min"], endpoint["workers"]["max"]) == (0, 2)  # no floor left
    deadline = time.monotonic() + 20
    while cloud.workers(endpoint["id"])["total"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cloud.workers(endpoint["id"])["total"] == 0  # nothing bills
    # B's next request wakes a worker: B was never cut off.
    assert httpx.get(url + "/api/tags", headers=headers, timeout=30).status_code == 200


def test_stop_sends_explicit_zeros_and_delete_stops_running_workers_first(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    _up(capsys)
    [endpoint] = cloud.endpoints()
    assert cloud.workers(endpoint["id"])["total"] >= 1
    provider, sent, resolved = cloud.provider()
    result = delete(resolved, provider)
    assert result.was_running
    [zeros] = sent.bodies("PATCH", f"/v2/serverless/{endpoint['id']}")
    assert zeros["workers"]["min"] == 0
    assert zeros["workers"]["max"] == 0
    assert cloud.endpoints() == []


def test_status_of_a_scaled_down_endpoint_does_not_wake_it(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    provider, _, resolved = cloud.provider()
    deploy(resolved, provider)
    [endpoint] = cloud.endpoints()
    with cloud.http as client:
        patch = {"workers": {"min": 0, "max": 2, "idleTimeout": 60}}
        assert client.patch(f"/v2/serverless/{endpoint['id']}", json=patch).status_code == 200
    provider, sent, resolved = cloud.provider()
    report = status(resolved, provider)
    assert report["status"] == "running"
    assert report["ready"] is None
    assert "next request starts one" in report["note"]
    assert len(sent.requests) <= 2
    assert cloud.workers(endpoint["id"])["total"] == 0


# -- bad input and faults ---------------------------------------------------------------------


def test_a_wrong_key_exits_4(cloud: Cloud, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_wrong_key_value")
    code, _, err = run(["up"], capsys)
    assert code == 4
    assert "HTTP 401" in err
    assert "RUNPOD_API_KEY" in err
    assert "rpa_wrong_key_value" not in err


def test_an_unknown_gpu_exits_2_listing_the_pools(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPU_MODEL", "GTX 1080")
    code, _, err = run(["deploy"], capsys)
    assert code == 2
    assert "no GPU model or pool 'GTX 1080'" in err
    assert "AMPERE_24" in err
    assert cloud.endpoints() == []


def test_a_volume_where_volumes_are_not_offered_exits_2_with_the_valid_ones(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with cloud.http as client:
        centers = client.get("/v2/catalog/datacenters").json()["dataCenters"]
    without = next(dc["id"] for dc in centers if not dc.get("networkVolumeTypes"))
    monkeypatch.setenv("ONDEMAND_RUNPOD_NETWORK_VOLUME", f"models@{without}")
    code, _, err = run(["deploy"], capsys)
    assert code == 2, err
    assert without in err
    assert "not every data center offers network volumes" in err
    assert cloud.endpoints() == []


def test_workers_that_never_get_a_gpu_exit_5_with_the_summary(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.faults(throttled=10)
    code, _, err = run(["up", "--timeout", "4s"], capsys)
    assert code == 5, err
    assert "no worker could get a GPU" in err
    assert "throttled" in err
    assert run(["down"], capsys)[0] == 0


def test_a_crash_loop_exits_9_pointing_at_the_worker_logs(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.faults(crash=10)
    # The gateway holds each /ping until its wait for a worker ends (`--no-worker-wait`):
    # shorter here, so the three sightings a crash loop takes come sooner.
    cloud.running.sandbox.runpod.engine.no_worker_wait = 1.0
    code, _, err = run(["up", "--timeout", "20s"], capsys)
    assert code == 9, err
    assert "crash" in err
    assert "logs" in err
    assert run(["down"], capsys)[0] == 0
