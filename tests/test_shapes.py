"""The promises in the shapes people run them: the real ``ondemand`` command in a script
that captures its output, in two shells (a Makefile), cancelled, failed, run again with a
changed config, on the local provider and on the sandbox cloud."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cloud import FAST_APPS, StartSandbox

# Two tokens: an answer in a few hundredths of a second, where the emulated Ollama is slow.
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"num_predict": 2}}  # fmt: skip
# A full answer is a stream long enough to be in flight when a cleanup runs: 5 s.
SLOW = {"OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40", "OLLAMA_EMULATOR_RESPONSE_TOKENS": "200"}
UNPULLABLE = {"OLLAMA_EMULATOR_PULL_FAIL": "no-such-model:7b"}


@dataclass
class Shell:
    """Runs the real command in its own processes, as a user's shell does."""

    provider: str
    env: dict[str, str]
    cwd: Path

    def sh(self, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", script], env={**self.env, **extra}, cwd=self.cwd,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def ondemand(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ondemand", *args], env={**self.env, **extra}, cwd=self.cwd,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def start(
        self, *args: str, sigint_ignored: bool = False, **extra: str
    ) -> subprocess.Popen[str]:
        """``ondemand ARGS`` in the background; with ``sigint_ignored`` as a shell starts a
        background job (`ondemand up &` in a script): SIGINT ignored, inherited through exec."""
        command = ["ondemand", *args]
        if sigint_ignored:
            command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
        return subprocess.Popen(
            command, env={**self.env, **extra}, cwd=self.cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def status(self, **extra: str) -> dict[str, object]:
        done = self.ondemand("status", "--json", **extra)
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report


def _launcher(directory: Path) -> Path:
    """An ``ondemand`` on PATH that is this checkout, as an installed one would be."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "ondemand"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ondemand "$@"\n')
    launcher.chmod(0o755)
    return bin_dir


@pytest.fixture(params=["local", "sandbox"])
def shell(
    request: pytest.FixtureRequest, tmp_path: Path, start_sandbox: StartSandbox
) -> Iterator[Shell]:
    env = {
        "PATH": f"{_launcher(tmp_path)}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "ONDEMAND_STATE_DIR": str(tmp_path / "state"),
        "ONDEMAND_PROVIDER": request.param,
        "ONDEMAND_NAME": "shapes",
        "ONDEMAND_MODELS": "llama3.2",
        "ONDEMAND_TIMEOUT": "60s",
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }
    emulated = {**{k: v for k, v in FAST_APPS.items() if k.startswith("OLLAMA_")}, **SLOW,
                **UNPULLABLE}  # fmt: skip
    if request.param == "local":
        # The local server takes its emulated Ollama's pace from the command's environment.
        env.update(emulated)
    else:
        running, _ = start_sandbox(tmp_path / "sandbox", app_env={**FAST_APPS, **emulated})
        env.update(running.env)
    work = tmp_path / "work"
    work.mkdir()
    shell = Shell(request.param, env, work)
    yield shell
    shell.ondemand("down", "--force")  # whatever a failed test left running


def _lines(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _chat(url: str, key: str, model: str = "llama3.2") -> int:
    body = {**CHAT, "model": model}
    return httpx.post(
        url + "/api/chat", json=body, headers={"X-API-Key": key}, timeout=30
    ).status_code


def test_up_captured_by_a_script_and_down_from_another_shell_stop_it(shell: Shell) -> None:
    up = shell.sh('X=$(ondemand up) && printf "%s\\n" "$X" > up.env')
    assert up.returncode == 0, up.stderr
    printed = _lines((shell.cwd / "up.env").read_text())
    assert _chat(printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]) == 200
    down = shell.sh("ondemand down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped shapes (no live lease and nothing in flight)")
    assert shell.status()["status"] == "stopped"


def test_up_and_down_as_two_makefile_targets_stop_it(shell: Shell) -> None:
    (shell.cwd / "Makefile").write_text(
        "up:\n\tondemand up > .ollama.env\n\ndown:\n\tondemand down\n"
    )
    up = subprocess.run(["make", "up"], env=shell.env, cwd=shell.cwd, capture_output=True,
                        text=True, timeout=120, check=False)  # fmt: skip
    assert up.returncode == 0, up.stderr
    down = subprocess.run(["make", "down"], env=shell.env, cwd=shell.cwd, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert "stopped shapes (no live lease" in down.stdout
    assert shell.status()["status"] == "stopped"


def test_the_last_down_waits_for_a_stream_in_flight_then_stops(shell: Shell) -> None:
    up = shell.ondemand("up")
    assert up.returncode == 0, up.stderr
    printed = _lines(up.stdout)
    lines: list[str] = []
    streaming = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST", printed["OLLAMA_HOST"] + "/api/chat",
            json={**CHAT, "stream": True, "options": {}},
            headers={"X-API-Key": printed["OLLAMA_API_KEY"]}, timeout=30,
        ) as answer:  # fmt: skip
            for line in answer.iter_lines():
                lines.append(line)
                streaming.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert streaming.wait(20)
    down = shell.ondemand("down")
    reader.join(30)
    assert down.returncode == 0, down.stderr
    assert "waiting for 1 request(s) in flight to end" in down.stderr
    assert "; 1 request(s) in flight ended first)" in down.stdout
    assert json.loads(lines[-1])["done"] is True  # the stream ran to its end
    assert shell.status()["status"] == "stopped"


def test_a_failed_up_stops_what_it_started_and_names_the_log(shell: Shell) -> None:
    failed = shell.ondemand("up", "--models", "llama3.2,no-such-model:7b")
    assert failed.returncode == 9, failed.stderr
    assert "no-such-model:7b" in failed.stderr
    assert "Afterwards: stopped shapes again: this up had started it" in failed.stderr
    log = "serve.log" if shell.provider == "local" else "/ovh/v1/app/"
    assert "Server log: " in failed.stderr
    assert log in failed.stderr
    assert shell.status()["status"] == "stopped"
    # With the list fixed, up again works: the advice does not loop.
    fixed = shell.ondemand("up", "--models", "llama3.2")
    assert fixed.returncode == 0, fixed.stderr


def test_keep_on_failure_keeps_it_for_debugging(shell: Shell) -> None:
    failed = shell.ondemand("up", "--keep-on-failure", "--models", "no-such-model:7b")
    assert failed.returncode == 9, failed.stderr
    assert "kept running for debugging (--keep-on-failure)" in failed.stderr
    # Running (or, on OVH, scaling: the platform's readiness probe sees it unhealthy).
    assert shell.status()["status"] in ("running", "starting")
    # It holds no lease: the next down stops it.
    down = shell.ondemand("down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped shapes")


@pytest.mark.parametrize(
    ("sig", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-to-a-background-job"],
)
def test_a_cancelled_up_stops_what_it_started(
    shell: Shell, sig: signal.Signals, sigint_ignored: bool
) -> None:
    # Pulls that take a minute: the up is cancelled while it waits.
    slow = {"OLLAMA_EMULATOR_PULL_SECONDS": "60"} if shell.provider == "local" else {}
    models = "llama3.2,qwen3:0.6b" if shell.provider == "local" else "llama3.2"
    if shell.provider == "sandbox":
        # The sandbox's apps pull in 0.05 s: hold the app in QUEUED instead.
        faults = {"ovh": {"slow": {"seconds": {"QUEUED": 60}}}}
        httpx.post(shell.env["ONDEMAND_SANDBOX_URL"] + "/_sandbox/faults", json=faults)
    up = shell.start("up", "--models", models, sigint_ignored=sigint_ignored, **slow)
    assert up.stderr is not None
    seen = ""
    deadline = time.monotonic() + 30
    while "url: " not in seen and time.monotonic() < deadline:
        seen += up.stderr.readline()
    assert "url: " in seen, seen
    up.send_signal(sig)
    _, err = up.communicate(timeout=60)
    assert up.returncode == 130, seen + err
    assert "shapes" in err
    assert "this up had started" in err
    deadline = time.monotonic() + 30
    while shell.status()["status"] != "stopped":
        assert time.monotonic() < deadline, shell.status()
        time.sleep(0.2)


def test_an_up_that_found_it_running_leaves_it_running_when_it_fails(shell: Shell) -> None:
    first = shell.ondemand("up", ONDEMAND_LEASE_HOLDER="job-a")
    assert first.returncode == 0, first.stderr
    printed = _lines(first.stdout)
    failed = shell.ondemand(
        "up", "--models", "llama3.2,no-such-model:7b", ONDEMAND_LEASE_HOLDER="job-b"
    )
    assert failed.returncode == 9, failed.stderr
    assert "a model could not be added" in failed.stderr
    assert "left as it was: it was already running when this up began" in failed.stderr
    assert _chat(printed["OLLAMA_HOST"], printed["OLLAMA_API_KEY"]) == 200


def test_a_second_up_with_more_models_adds_them_without_a_restart(shell: Shell) -> None:
    first = shell.ondemand("up")
    assert first.returncode == 0, first.stderr
    one = _lines(first.stdout)
    before = shell.status()["running_since"]
    second = shell.ondemand("up", "--models", "llama3.2,qwen3:0.6b")
    assert second.returncode == 0, second.stderr
    two = _lines(second.stdout)
    assert "adding qwen3:0.6b to the running server (no restart)" in second.stderr
    assert two["OLLAMA_HOST"] == one["OLLAMA_HOST"]
    assert _chat(two["OLLAMA_HOST"], two["OLLAMA_API_KEY"], "qwen3:0.6b") == 200
    assert _chat(one["OLLAMA_HOST"], one["OLLAMA_API_KEY"]) == 200  # the first job goes on
    assert shell.status()["running_since"] == before
    third = shell.ondemand("up", "--models", "qwen3:0.6b")
    assert third.returncode == 0, third.stderr
    assert "no longer configured: llama3.2:latest: loaded until shapes stops" in third.stderr


def test_a_second_up_with_a_changed_config_redeploys_unless_another_job_holds_it(
    shell: Shell,
) -> None:
    first = shell.ondemand("up", ONDEMAND_LEASE_HOLDER="job-a")
    assert first.returncode == 0, first.stderr
    held = shell.ondemand("up", ONDEMAND_KEEP_ALIVE="10m", ONDEMAND_LEASE_HOLDER="job-b")
    assert held.returncode == 0, held.stderr
    assert "its config changed since it started (environment ONDEMAND_KEEP_ALIVE)" in held.stderr
    assert "it is not redeployed under others: 1 live lease(s): job-a (" in held.stderr
    assert _lines(held.stdout)["OLLAMA_HOST"] == _lines(first.stdout)["OLLAMA_HOST"]
    shell.ondemand("down", ONDEMAND_LEASE_HOLDER="job-a")
    again = shell.ondemand("up", ONDEMAND_KEEP_ALIVE="10m", ONDEMAND_LEASE_HOLDER="job-b")
    assert again.returncode == 0, again.stderr
    assert "restarting it with the config, as no other job holds it" in again.stderr
    # Running what the config says now: nothing to change the next time.
    last = shell.ondemand("up", ONDEMAND_KEEP_ALIVE="10m", ONDEMAND_LEASE_HOLDER="job-b")
    assert "config changed" not in last.stderr


def test_global_options_work_after_the_command_and_up_takes_deploys_options(
    shell: Shell,
) -> None:
    env = {k: v for k, v in shell.env.items() if k not in ("ONDEMAND_PROVIDER", "ONDEMAND_NAME")}
    shaped = Shell(shell.provider, env, shell.cwd)
    up = shaped.ondemand(
        "up", "--provider", shell.provider, "--name", "after", "--models", "llama3.2",
        "--gpu", "L4", "--json", "-q",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["status"] == "ready"
    assert up.stderr == ""  # -q after the command too
    status = shaped.status(ONDEMAND_PROVIDER=shell.provider, ONDEMAND_NAME="after")
    assert status["status"] == "running"
    down = shaped.ondemand("down", "--name", "after", "--provider", shell.provider)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped after")


def test_a_stopped_app_starts_from_its_own_image_when_the_config_names_none(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """The seed's flow on OVH: deploy once with an image, then up and down every day with
    no image in the daily job's config."""
    running, api = start_sandbox(tmp_path / "own-image")
    env = {
        "PATH": f"{_launcher(tmp_path)}:/usr/bin:/bin", "HOME": str(tmp_path),
        "ONDEMAND_STATE_DIR": str(tmp_path / "state"), "ONDEMAND_PROVIDER": "ovh",
        "ONDEMAND_NAME": "daily", "ONDEMAND_MODELS": "llama3.2", "ONDEMAND_TIMEOUT": "60s",
        "OVH_AI_API_URL": running.env["OVH_AI_API_URL"],
        "OVH_AI_TOKEN": running.env["OVH_AI_TOKEN"],
    }  # fmt: skip
    shell = Shell("ovh", env, tmp_path)
    image = "registry.example.com/team/ollama-ondemand:1"
    deployed = shell.ondemand("deploy", "--image", image)
    assert deployed.returncode == 0, deployed.stderr
    assert "created, then stopped" in deployed.stdout
    for _ in range(2):  # two days
        up = shell.ondemand("up")
        assert up.returncode == 0, up.stderr
        down = shell.ondemand("down")
        assert down.returncode == 0, down.stderr
    [app] = [a for a in api.http.get("/v1/app").json()["items"] if a["spec"]["name"] == "daily"]
    assert app["spec"]["image"] == image
    # Nothing to start from: the error says how to give one.
    shell.ondemand("delete")
    missing = shell.ondemand("up")
    assert missing.returncode == 2
    assert "no image to deploy" in missing.stderr
