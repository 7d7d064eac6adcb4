"""The lifecycle commands on OVH, run as a user runs them, against the sandbox's emulated AI
API and the real servers it starts: exit codes, what they print, and what they leave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.sandbox.server import SandboxServer
from tests.clirun import Result, run
from tests.cloud import Ovh, StartSandbox, use_ovh_cli

Cli = Any


@pytest.fixture
def sandbox(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SandboxServer, Ovh]:
    running, api = start_sandbox()
    use_ovh_cli(running, monkeypatch, tmp_path, ONDEMAND_MODELS="llama3.2")
    return running, api


def _app(api: Ovh) -> dict[str, Any]:
    [app] = api.http.get("/v1/app").json()["items"]
    assert isinstance(app, dict)
    return app


def _up(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[Result, dict[str, str]]:
    result = run([*args, "up"], capsys)
    code, out, err = result
    assert code == 0, err
    return result, dict(line.split("=", 1) for line in out.splitlines())


def test_up_chat_status_down_delete(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    _, api = sandbox
    (_, _, err), printed = _up(capsys)
    url, key = printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]
    lines = err.splitlines()
    # The URL is shown as soon as the platform gives it, before the wait for ready.
    shown = next(i for i, line in enumerate(lines) if line.startswith(f"url: {url}"))
    assert shown < next(i for i, line in enumerate(lines) if "/ping 200" in line)
    # Each state once, in the platform's order.
    states = [line.split("ovh: ")[1].split()[0] for line in lines if "] ovh: " in line]
    assert states == sorted(set(states), key=states.index)
    assert states[-1] == "RUNNING"

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
    assert chat.status_code == 200
    assert chat.json()["done"] is True
    assert httpx.post(url + "/api/chat", json={}, timeout=10).status_code == 401

    code, out, _ = run(["status", "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert report["vendor_state"] == "RUNNING"
    assert report["ready"] is True
    assert report["url"] == url
    assert report["uptime_seconds"] >= 0
    assert report["cost"]["currency"] == "EUR"
    assert report["cost"]["hourly"] > 0
    assert [m["name"] for m in report["server"]["server"]["models"]] == ["llama3.2"]

    code, out, _ = run(["status"], capsys)
    assert "  leases: 1 live\n" in out

    code, out, _ = run(["down"], capsys)
    assert code == 0
    head, share = out.strip().splitlines()
    assert head == "stopped ollama-ondemand (no live lease and nothing in flight)"
    assert share.startswith("  this run's share: billed 0 min x 0.95 EUR/h")
    assert _app(api)["status"]["state"] == "STOPPED"  # verified, not just requested
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/ping", timeout=2)

    code, out, _ = run(["delete"], capsys)
    assert code == 0
    assert "deleted" in out
    api.wait_gone(str(api.http.get("/v1/app").json()["items"][0]["id"]))


def test_start_on_running_and_stop_on_stopped_or_missing_succeed_and_say_so(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    _, api = sandbox
    code, out, _ = run(["stop"], capsys)
    assert code == 0
    assert "nothing to stop" in out

    _up(capsys)
    code, _, err = run(["start"], capsys)
    assert code == 0
    assert "already running" in err
    assert len(api.http.get("/v1/app").json()["items"]) == 1

    assert run(["stop"], capsys)[0] == 0
    code, out, _ = run(["stop"], capsys)
    assert code == 0
    assert out.strip() == "ollama-ondemand was already stopped"


def test_up_after_down_restarts_the_same_app_on_the_same_url(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    _, api = sandbox
    _, first = _up(capsys)
    app_id = _app(api)["id"]
    assert run(["down"], capsys)[0] == 0
    (_, _, _err), again = _up(capsys)
    assert again["OLLAMA_HOST"] == first["OLLAMA_HOST"]
    assert again["OLLAMA_API_KEY"] != first["OLLAMA_API_KEY"]  # a key per run
    assert _app(api)["id"] == app_id


def test_deploy_leaves_nothing_running(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    _, api = sandbox
    code, out, _ = run(["deploy"], capsys)
    assert code == 0
    assert "created, then stopped" in out
    api.wait(_app(api)["id"], "STOPPED")
    code, out, _ = run(["deploy"], capsys)
    assert code == 0
    assert "unchanged" in out


def test_wrong_or_missing_token_exits_4_with_what_to_do(
    sandbox: tuple[SandboxServer, Ovh],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OVH_AI_TOKEN", "wrong-token-value")
    code, _, err = run(["up"], capsys)
    assert code == 4
    assert "HTTP 401" in err
    assert "OVH_AI_TOKEN" in err
    assert "wrong-token-value" not in err
    monkeypatch.delenv("OVH_AI_TOKEN")
    code, _, err = run(["status"], capsys)
    assert code == 4
    assert "OVH_AI_TOKEN is not set" in err
    assert "operator" in err


def test_no_capacity_exits_5_with_the_platforms_message(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    running, _ = sandbox
    httpx.post(f"{running.url}/_sandbox/faults", json={"ovh": {"no_capacity": 1}})
    code, _, err = run(["up"], capsys)
    assert code == 5, err
    assert "FAILED" in err
    assert "another region or GPU model" in err


def test_an_app_whose_server_exits_fails_with_exit_3_and_its_reason(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    _, api = sandbox
    assert run(["deploy"], capsys)[0] == 0
    app = api.wait(_app(api)["id"], "STOPPED")
    broken = {"envVars": [{"name": "ONDEMAND_MAX_BODY", "value": "bogus"}]}
    assert api.http.put(f"/v1/app/{app['id']}", json=broken).status_code == 200
    code, _, err = run(["start"], capsys)
    assert code == 3, err
    assert "ended FAILED on OVH" in err
    assert "ONDEMAND_MAX_BODY" in err


def test_an_app_stuck_queued_times_out_with_exit_6_and_the_last_state(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    running, _ = sandbox
    slow = {"ovh": {"slow": {"seconds": {"QUEUED": 60}}}}
    httpx.post(f"{running.url}/_sandbox/faults", json=slow)
    code, _, err = run(["up", "--timeout", "2s"], capsys)
    assert code == 6, err
    assert "timed out after 2s" in err
    assert "QUEUED" in err
    # The failed up stopped what it had started, and says where the server's log is.
    assert "Afterwards: stopped ollama-ondemand again: this up had started it" in err
    assert "check the server log ('ovhai app logs " in err
    code, out, _ = run(["down"], capsys)
    assert code == 0
    assert out.strip() == "ollama-ondemand was already stopped"


def test_delete_of_a_running_app(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    _, api = sandbox
    _, printed = _up(capsys)
    app_id = _app(api)["id"]
    code, out, _ = run(["delete"], capsys)
    assert code == 0
    assert "stopped ollama-ondemand; deployment deleted" in out
    api.wait_gone(app_id)
    with pytest.raises(httpx.TransportError):
        httpx.get(printed["OLLAMA_HOST"] + "/ping", timeout=2)
    code, out, _ = run(["delete"], capsys)
    assert code == 0
    assert "nothing to stop" in out


def test_the_sandbox_provider_needs_no_credentials(
    sandbox: tuple[SandboxServer, Ovh],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, api = sandbox
    for name in ("OVH_AI_TOKEN", "OVH_AI_API_URL", "ONDEMAND_IMAGE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("ONDEMAND_SANDBOX_URL", running.url)
    _, printed = _up(capsys, "--provider", "sandbox")
    assert _app(api)["spec"]["image"] == "ollama-ondemand:sandbox"
    assert httpx.get(printed["OLLAMA_HOST"] + "/ping", timeout=5).status_code == 200
    assert run(["--provider", "sandbox", "down"], capsys)[0] == 0


def test_a_stop_that_does_not_finish_exits_3_saying_it_may_still_bill(
    sandbox: tuple[SandboxServer, Ovh],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, api = sandbox
    _up(capsys)
    slow = {"ovh": {"slow": {"seconds": {"STOPPING": 4}}}}
    httpx.post(f"{running.url}/_sandbox/faults", json=slow)
    code, _, err = run(["stop", "--timeout", "1s"], capsys)
    assert code == 3, err
    assert "did not stop: ovh still reports it STOPPING after 1s" in err
    assert "may still bill" in err
    assert "'ondemand down' again" in err
    # Repeating it, once the platform has finished, succeeds.
    httpx.delete(f"{running.url}/_sandbox/faults")
    monkeypatch.setenv("ONDEMAND_TIMEOUT", "60s")
    api.wait(_app(api)["id"], "STOPPED", timeout=20)
    code, out, err = run(["down"], capsys)
    assert code == 0, err
    assert "already stopped" in out


def test_an_app_in_error_is_not_started_again_and_the_way_out_is_to_redeploy(
    sandbox: tuple[SandboxServer, Ovh], capsys: pytest.CaptureFixture[str]
) -> None:
    running, api = sandbox
    httpx.post(f"{running.url}/_sandbox/faults", json={"ovh": {"platform_error": 1}})
    code, _, err = run(["up"], capsys)
    assert code == 5, err
    assert "ERROR" in err
    app_id = _app(api)["id"]

    code, _, err = run(["start"], capsys)
    assert code == 3, err
    assert "a failure on OVH's side" in err
    assert "'ondemand delete' then 'ondemand up'" in err
    assert _app(api)["status"]["state"] == "ERROR"  # nothing was asked of OVH

    assert run(["delete"], capsys)[0] == 0
    api.wait_gone(app_id)
    code, _, err = run(["up"], capsys)
    assert code == 0, err
    assert _app(api)["status"]["state"] == "RUNNING"
