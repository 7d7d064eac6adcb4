"""The provider contract, the same for every provider: the lifecycle commands a CI job runs,
in the order it runs them, each repeated where a retried job would repeat it.

Cloud providers run against the sandbox's emulated APIs over loopback HTTP; `local` runs its
server on this machine. What a provider may add (a pod's disk note, RunPod's gateway key) is
tested in its own module; what is here holds for all of them."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.config import load_config
from ondemand.lifecycle import deploy, make_provider
from ondemand.providers.base import CREATED_BY_ANOTHER, Deployment
from tests.clirun import run
from tests.cloud import StartSandbox
from tests.jobs import run_threads

IMAGE = "registry.example.com/team/ollama-ondemand:1.4.0"
HELLO = [{"role": "user", "content": "hi"}]
PROVIDERS = ["local", "sandbox", "ovh", "runpod", "runpod-pod"]
# A serverless worker that scales to zero would take a per-run key with it: RunPod's
# endpoint hands out its own key (tests/providers/test_runpod.py).


def _sandbox_env(provider: str, printed: dict[str, str]) -> dict[str, str]:
    if provider == "sandbox":
        return {"ONDEMAND_SANDBOX_URL": printed["ONDEMAND_SANDBOX_URL"]}
    prefix = "OVH_" if provider == "ovh" else "RUNPOD_"
    return {
        "ONDEMAND_IMAGE": IMAGE,
        **{k: v for k, v in printed.items() if k.startswith(prefix)},
    }


@pytest.fixture(params=PROVIDERS)
def provider(
    request: pytest.FixtureRequest,
    start_sandbox: StartSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    name: str = request.param
    for variable in list(os.environ):
        if variable.startswith(("ONDEMAND_", "AUTHORIZATION_", "OLLAMA_", "PRELOAD_", "GITHUB_")):
            monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    env = {
        "ONDEMAND_PROVIDER": name,
        "ONDEMAND_NAME": "contract",
        "ONDEMAND_MODELS": "llama3.2",
        "ONDEMAND_TIMEOUT": "45s",
    }
    if name == "local":
        env |= {
            "ONDEMAND_STATE_DIR": str(tmp_path / "state"),
            "OLLAMA_EMULATOR_LOAD_TIME": "0.05",
            "OLLAMA_EMULATOR_PULL_SECONDS": "0.1",
        }
        # No real ollama: the local server falls back to the emulator.
        monkeypatch.setenv("PATH", "/usr/bin:/bin")
    else:
        running, _ = start_sandbox(no_worker_wait=3.0)
        env |= _sandbox_env(name, running.env)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return name


def _status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["--json", "status"], capsys)
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def _managed(tmp_path: Path) -> list[str]:
    env = dict(os.environ)
    provider = make_provider(load_config(path=None, env=env, cwd=tmp_path), env)
    try:
        return [d.name for d in provider.list_managed()]
    finally:
        provider.close()


def _client_headers(provider: str, key: str) -> dict[str, str]:
    if provider == "runpod":
        # RunPod's gateway takes the RunPod key in Authorization; ours goes in X-API-Key.
        return {"Authorization": f"Bearer {os.environ['RUNPOD_API_KEY']}", "X-API-Key": key}
    return {"Authorization": f"Bearer {key}"}


def _chat(url: str, headers: dict[str, str]) -> str:
    answer = httpx.post(
        url + "/api/chat",
        headers=headers,
        json={"model": "llama3.2", "messages": HELLO, "stream": False},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["message"]["content"])


def test_the_lifecycle_a_ci_job_runs(
    provider: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _status(capsys)["status"] == "absent"
    code, out, err = run(["down"], capsys)
    assert code == 0, err
    assert out.startswith("nothing to stop"), out

    # deploy creates it and leaves nothing billing; a second deploy makes no duplicate.
    for _ in range(2):
        code, _, err = run(["deploy"], capsys)
        assert code == 0, err
        assert _status(capsys)["status"] == "stopped"
    assert _managed(tmp_path).count("contract") <= 1

    # up waits until every model is warm and hands out what the clients need.
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    printed = dict(line.split("=", 1) for line in out.splitlines())
    url, key = printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]
    assert printed["OPENAI_BASE_URL"] == url + "/v1"
    assert _chat(url, _client_headers(provider, key))
    report = _status(capsys)
    assert (report["status"], report["ready"], report["url"]) == ("running", True, url)
    assert _managed(tmp_path) == ["contract"]

    # A retried job: up again reuses the same server with a lease and key of its own;
    # start on running succeeds.
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    again = dict(line.split("=", 1) for line in out.splitlines())
    assert again["OLLAMA_HOST"] == url
    assert again["OLLAMA_API_KEY"] != key
    assert again["ONDEMAND_LEASE_ID"] != printed["ONDEMAND_LEASE_ID"]
    assert _chat(url, _client_headers(provider, again["OLLAMA_API_KEY"]))
    assert run(["start"], capsys)[0] == 0

    # down stops it and verifies; a second down (an always() cleanup) succeeds too. A
    # serverless endpoint is left to scale to zero (tests/providers/test_runpod.py) unless
    # forced.
    if provider == "runpod":
        code, out, err = run(["down"], capsys)
        assert (code, out.split(":")[:2]) == (0, ["contract", " left to scale to zero"]), err
    code, out, err = run(["down", "--force"] if provider == "runpod" else ["down"], capsys)
    assert code == 0, err
    assert out.startswith("stopped contract"), out
    assert _status(capsys)["status"] == "stopped"
    code, out, err = run(["down"], capsys)
    assert code == 0, err
    assert "already stopped" in out

    # up after down brings it back; a cloud keeps its URL (local binds a free port anew).
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    fresh = dict(line.split("=", 1) for line in out.splitlines())
    back = fresh["OLLAMA_HOST"]
    assert back == url or provider == "local"
    assert _chat(back, _client_headers(provider, fresh["OLLAMA_API_KEY"]))
    # The first run's key ended with its lease, and does not work on the next run.
    stale = httpx.get(back + "/api/tags", headers=_client_headers(provider, key), timeout=10)
    assert stale.status_code == 401

    # delete removes it whatever its state; deleting nothing succeeds.
    code, out, err = run(["delete"], capsys)
    assert code == 0, err
    assert "deployment deleted" in out
    assert _status(capsys)["status"] == "absent"
    assert _managed(tmp_path) == []
    assert run(["delete"], capsys)[0] == 0


CREATES = ("/v1/app", "/v2/serverless", "/v2/pods")


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "local"], indirect=True)
def test_two_jobs_deploying_at_once_leave_one_deployment(
    provider: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each job holds its create until the other's is ready to go: both looked, both found
    # nothing, both create. Only the settling after the create can keep one.
    both_looked = threading.Barrier(2)

    def hold_the_create(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith(CREATES):
            both_looked.wait(timeout=20)

    env = dict(os.environ)
    results: list[Deployment] = []

    def job() -> None:
        resolved = load_config(path=None, env=env, cwd=tmp_path)
        cloud = make_provider(resolved, env)
        try:
            _http(cloud).event_hooks["request"].append(hold_the_create)
            results.append(deploy(resolved, cloud))
        finally:
            cloud.close()

    assert run_threads(job, job) == []
    # Both jobs were handed the same one; only the job that made it may stop it again.
    assert results[0].url == results[1].url
    mine, theirs = sorted(results, key=lambda r: r.detail == CREATED_BY_ANOTHER)
    assert (mine.detail or "").startswith("created"), mine
    assert theirs.detail == CREATED_BY_ANOTHER
    assert _managed(tmp_path) == ["contract"]
    report = _status(capsys)
    assert (report["status"], report["url"]) == ("stopped", results[0].url)


def _http(provider: object) -> httpx.Client:
    api = getattr(provider, "runpod", None) or getattr(provider, "client")  # noqa: B009
    http: httpx.Client = api.api.http
    return http
