"""The `local` provider through the CLI: up, status, down, delete, and what goes wrong."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ondemand.processes import free_port
from tests.clirun import run


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith(("ONDEMAND_", "AUTHORIZATION_", "OLLAMA_", "PRELOAD_", "GITHUB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ONDEMAND_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ONDEMAND_MODELS", "llama3.2")
    monkeypatch.setenv("OLLAMA_EMULATOR_LOAD_TIME", "0.05")
    monkeypatch.setenv("OLLAMA_EMULATOR_PULL_SECONDS", "0.1")
    # No real ollama on PATH in these tests: the provider must fall back to the emulator.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "state" / "local"
    # Whatever a test left running is stopped, as `down` would.
    for server in (tmp_path / "state" / "local").glob("*/server.json"):
        pid = json.loads(server.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for init to reap it, which may take a while)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _env_lines(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_up_chat_status_down_delete(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    env = _env_lines(out)
    url, key = env["OLLAMA_HOST"], env["OLLAMA_API_KEY"]
    assert env["OPENAI_BASE_URL"] == url + "/v1"
    assert env["OPENAI_API_KEY"] == key
    assert "using the built-in Ollama emulator" in err
    assert "ready: " + url in err
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    chat = httpx.post(url + "/api/chat", json=body, headers={"Authorization": f"Bearer {key}"})
    assert chat.status_code == 200
    assert httpx.post(url + "/api/chat", json=body).status_code == 401

    code, out, _ = run(["--json", "status"], capsys)
    report = json.loads(out)
    assert (report["status"], report["ready"], report["url"]) == ("running", True, url)
    models = report["server"]["server"]["models"]
    assert [(m["name"], m["phase"]) for m in models] == [("llama3.2", "warm")]

    pid = json.loads((state / "ollama-ondemand" / "server.json").read_text())["pid"]
    code, out, _ = run(["down"], capsys)
    assert code == 0
    assert out.startswith("stopped ollama-ondemand (no live lease and nothing in flight)")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping")
    assert not _running(pid)

    code, out, _ = run(["down"], capsys)
    assert (code, out.strip()) == (0, "ollama-ondemand was already stopped")
    code, out, _ = run(["delete"], capsys)
    assert code == 0
    assert sorted(p.name for p in (state / "ollama-ondemand").iterdir()) == ["models"]
    code, out, _ = run(["status"], capsys)
    assert out.startswith("ollama-ondemand (local): absent")


def test_a_second_up_reuses_the_running_server_and_the_deployment_keeps_its_keys(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(["--json", "up"], capsys)
    second = run(["--json", "up"], capsys)
    one, two = json.loads(first[1]), json.loads(second[1])
    assert (one["reused"], two["reused"]) == (False, True)
    assert one["url"] == two["url"]
    assert one["lease_id"] != two["lease_id"]
    assert len(list(state.glob("*/server.json"))) == 1
    # Stopped and started again, the deployment keeps its own key (without per-run keys,
    # that is the key handed out).
    run(["down"], capsys)
    monkeypatch.setenv("ONDEMAND_RUN_KEY", "false")
    third = json.loads(run(["--json", "up"], capsys)[1])
    fourth = json.loads(run(["--json", "up"], capsys)[1])
    assert third["api_key"] == fourth["api_key"]
    assert not third["api_key"].startswith("odk_run_")
    stored = json.loads((state / "ollama-ondemand" / "secrets.json").read_text())
    assert stored["AUTHORIZATION_APIKEY"] == third["api_key"]
    assert stored["ONDEMAND_ADMIN_KEY"] != third["api_key"]
    assert (state / "ollama-ondemand" / "secrets.json").stat().st_mode & 0o777 == 0o600


def test_down_with_nothing_deployed_succeeds_and_says_so(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["down"], capsys)
    assert (code, out.strip()) == (0, "nothing to stop: there is no deployment named "
                                      "'ollama-ondemand'")  # fmt: skip


def test_an_unpullable_model_fails_up_with_exit_9_naming_it(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONDEMAND_MODELS", "llama3.2,nope:1b")
    monkeypatch.setenv("OLLAMA_EMULATOR_PULL_FAIL", "nope:1b")
    code, out, err = run(["up"], capsys)
    assert code == 9
    assert out == ""
    assert "ollama-ondemand is unhealthy: nope:1b: pull failed" in err
    assert "file does not exist" in err
    assert run(["down"], capsys)[0] == 0


def test_a_timeout_waiting_for_ready_exits_6_and_points_at_the_log(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_EMULATOR_LOAD_TIME", "30")
    code, _, err = run(["up", "--timeout", "2s"], capsys)
    assert code == 6
    assert "timed out after 2s waiting for ollama-ondemand to be ready" in err
    assert str(state / "ollama-ondemand" / "serve.log") in err


def test_a_port_in_use_is_a_usage_error(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ondemand.serving import bind

    holder = bind("127.0.0.1", 0)
    try:
        monkeypatch.setenv("ONDEMAND_PORT", str(holder.getsockname()[1]))
        code, _, err = run(["up"], capsys)
    finally:
        holder.close()
    assert code == 2
    assert "is already in use" in err


def test_a_stale_pid_file_is_cleared_and_up_starts_a_new_server(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["deploy"], capsys)[0] == 0
    dead = free_port()  # any number that is not a running ondemand serve
    (state / "ollama-ondemand" / "server.json").write_text(
        json.dumps({"pid": 2**22 + dead, "port": dead, "url": f"http://127.0.0.1:{dead}"})
    )
    _, out, _ = run(["status"], capsys)
    assert "stopped" in out
    assert "stale state was cleared" in out
    assert run(["up"], capsys)[0] == 0


def test_a_bad_ollama_bin_is_a_usage_error(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_BIN", str(state / "no-ollama-here"))
    code, _, err = run(["up"], capsys)
    assert code == 2
    assert "OLLAMA_BIN=" in err
    assert "is not an executable" in err


def test_the_key_is_masked_before_it_is_printed_in_actions(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, _ = run(["up"], capsys)
    assert code == 0
    key = _env_lines(out)["OLLAMA_API_KEY"]
    lines = out.splitlines()
    assert lines.index(f"::add-mask::{key}") < lines.index(f"OLLAMA_API_KEY={key}")


def test_cloud_providers_without_credentials_say_which_to_set(
    state: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    for provider in ("runpod", "runpod-pod"):
        code, _, err = run(["--provider", provider, "up"], capsys)
        assert code == 4
        assert "RUNPOD_API_KEY is not set" in err
