"""The `runpod-pod` provider against the sandbox's emulated REST v2 pods and pod proxy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.config import load_config
from ondemand.lifecycle import deploy, make_provider
from ondemand.providers.runpod_pod import RunpodPodProvider
from ondemand.sandbox.server import SandboxServer
from tests.clirun import run
from tests.cloud import StartSandbox

IMAGE = "registry.example.com/team/ollama-ondemand:1.4.0"


@pytest.fixture
def sandbox(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> SandboxServer:
    running, _ = start_sandbox()
    monkeypatch.chdir(tmp_path)
    for name in ("ONDEMAND_API_KEY", "ONDEMAND_ADMIN_KEY", "ONDEMAND_CONFIG", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "ONDEMAND_PROVIDER": "runpod-pod",
        **{k: v for k, v in running.env.items() if k.startswith("RUNPOD_")},
        "ONDEMAND_IMAGE": IMAGE,
        "ONDEMAND_MODELS": "llama3.2",
        "ONDEMAND_TIMEOUT": "30s",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return running


def _pods(running: SandboxServer) -> list[dict[str, Any]]:
    answer = httpx.get(running.url + "/runpod/v2/pods", headers=running.headers)
    pods: list[dict[str, Any]] = answer.json()["pods"]
    return pods


def _faults(running: SandboxServer, **document: object) -> None:
    answer = httpx.post(f"{running.url}/_sandbox/faults", json={"runpod": document})
    assert answer.status_code == 200, answer.text


def test_the_pod_body_matches_the_reference(sandbox: SandboxServer, tmp_path: Path) -> None:
    env = dict(os.environ)
    resolved = load_config(path=None, env=env, cwd=tmp_path)
    provider = make_provider(resolved, env)
    assert isinstance(provider, RunpodPodProvider)
    sent: list[httpx.Request] = []
    provider.runpod.api.http.event_hooks["request"].append(sent.append)
    try:
        deployed = deploy(resolved, provider)
    finally:
        provider.close()
    # A new pod runs at once: deploy stops it again so nothing bills.
    assert deployed.detail == "created, then stopped"
    [create] = [r for r in sent if r.method == "POST" and r.url.path.endswith("/v2/pods")]
    body = json.loads(create.content)
    assert set(body) == {"name", "image", "gpu", "cloud", "disk", "ports", "env", "mounts"}
    assert body["gpu"] == {"id": "NVIDIA L4", "count": 1}
    assert body["cloud"] == "SECURE"
    assert body["ports"] == ["8080/http"]
    assert body["mounts"] == {"persistent": {"size": 50, "path": "/workspace"}}
    assert body["env"]["OLLAMA_MODELS"] == "/workspace/ollama-models"
    assert body["env"]["PORT"] == "8080"
    [stop] = [r for r in sent if r.url.path.endswith("/action")]
    assert json.loads(stop.content) == {"action": "stop"}


def test_up_chat_through_the_pod_proxy_down_says_the_disk_bills_delete(
    sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    printed = dict(line.split("=", 1) for line in out.splitlines())
    url, key = printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]
    [pod] = _pods(sandbox)
    assert url == sandbox.env["RUNPOD_POD_PROXY_URL"].format(pod_id=pod["id"], port=8080)
    chat = httpx.post(
        url + "/api/chat",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
        timeout=30,
    )
    assert chat.status_code == 200, chat.text
    assert httpx.get(url + "/api/tags", timeout=10).status_code == 401

    code, out, _ = run(["down"], capsys)
    assert code == 0
    assert out.startswith("stopped ollama-ondemand")
    assert "still bills its 50 GB volume disk" in out
    assert "--delete" in out
    assert _pods(sandbox)[0]["status"] == "EXITED"
    code, out, _ = run(["status"], capsys)
    assert "still bills" in out

    code, _, err = run(["start"], capsys)
    assert code == 0, err
    code, out, _ = run(["down", "--delete"], capsys)
    assert code == 0
    # The volume disk, and the model cache on it, went with the pod: nothing is said kept.
    assert out.rstrip().endswith("; deployment deleted"), out
    assert _pods(sandbox) == []


def test_a_pod_whose_gpu_was_taken_exits_5_with_what_to_do(
    sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["deploy"], capsys)[0] == 0
    _faults(sandbox, zero_gpus=1)
    code, _, err = run(["start"], capsys)
    assert code == 5, err
    assert "no free GPU" in err
    assert "ondemand delete" in err


def test_a_pod_create_answered_500_makes_no_duplicate(
    sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _faults(sandbox, created_then_500=1)
    code, _, err = run(["deploy"], capsys)
    assert code == 0, err
    assert len(_pods(sandbox)) == 1
