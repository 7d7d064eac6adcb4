"""action.yml run step by step as GitHub's runner runs it (tests/actionrunner.py), against
the sandbox cloud: what a workflow gets from it (outputs, exported env, masks, summary) and
what it says when the workflow is wrong."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.actionrunner import (
    ROOT,
    ActionRun,
    JobRun,
    Runner,
    install_standin,
    load_action,
    run_workflow_job,
)
from tests.cloud import FAST_APPS, StartSandbox
from tests.github_fake import REPOSITORY, TOKEN, FakeGitHub

API_KEY = "odk_action_test_user_key_0123456789"


def _setup_python(with_: Mapping[str, str]) -> dict[str, str]:
    # The job's own Python must stay the default: the action's venv is its own.
    assert with_["update-environment"] == "false"
    return {"python-path": sys.executable}


def _installed(temp: Path) -> None:
    install_standin(temp)


@pytest.fixture
def job(tmp_path: Path) -> Runner:
    temp = tmp_path / "runner-temp"
    _installed(temp)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        # Where the job's checkout would be; no ondemand.yml in it.
        "PWD": str(tmp_path),
    }
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return Runner(temp=temp, env=env, uses={"actions/setup-python": _setup_python})


@pytest.fixture
def sandbox_job(job: Runner, start_sandbox: StartSandbox) -> Runner:
    running, _ = start_sandbox()
    job.env["ONDEMAND_SANDBOX_URL"] = running.env["ONDEMAND_SANDBOX_URL"]
    return job


UP = {"command": "up", "provider": "sandbox", "models": "llama3.2", "timeout": "60s"}


def _ok(run: ActionRun) -> ActionRun:
    assert run.code == 0, run.log
    return run


def test_up_then_down_give_a_workflow_everything_it_needs(sandbox_job: Runner) -> None:
    up = _ok(sandbox_job.run({**UP, "api-key": API_KEY}))
    outputs = up.outputs
    assert outputs["status"] == "ready"
    assert outputs["url"].startswith("http://127.0.0.1:")
    assert outputs["openai-url"] == outputs["url"] + "/v1"
    # Tests get a key of their own run, masked, that ends with the lease; never the admin key.
    run_key = outputs["api-key"]
    assert run_key.startswith("odk_run_")
    assert run_key in up.masks
    assert outputs["deployment-id"]
    assert outputs["lease-id"].startswith("lse_")
    # Later steps see the settings, and the official client works from them alone.
    env = up.exported_env
    assert env["OLLAMA_HOST"] == outputs["url"]
    assert env["OPENAI_BASE_URL"] == outputs["openai-url"]
    assert env["OLLAMA_API_KEY"] == env["OPENAI_API_KEY"] == run_key
    assert env["ONDEMAND_LEASE_ID"] == outputs["lease-id"]
    assert "ONDEMAND_ADMIN_KEY" not in env
    headers = {"Authorization": f"Bearer {env['OLLAMA_API_KEY']}"}
    with ollama.Client(host=env["OLLAMA_HOST"], headers=headers) as client:
        reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content
    # Only `ondemand` is put on PATH, from the action's own venv.
    [bin_dir] = up.path
    assert sorted(p.name for p in Path(bin_dir).iterdir()) == ["ondemand"]
    assert "| URL | `" + outputs["url"] + "` |" in up.summary
    assert "time to ready" in up.summary
    assert f"| lease | {outputs['lease-id']} held by " in up.summary

    sandbox_job.env.update(env)  # what $GITHUB_ENV gives the job's later steps
    down = _ok(sandbox_job.run({"command": "down", "provider": "sandbox"}))
    assert down.outputs["status"] == "stopped"
    assert re.fullmatch(r"\d+\.\d{4}", down.outputs["cost"]), down.outputs
    assert f"| leases | released {outputs['lease-id']} (" in down.summary
    assert "| this run's share |" in down.summary
    assert "| uptime |" in down.summary
    assert "| estimated cost |" in down.summary
    # The second use of the action in the job reuses the venv the first one installed.
    assert "already installed" in down.steps[1].stdout


def test_every_secret_is_masked_before_it_can_appear(sandbox_job: Runner) -> None:
    up = _ok(sandbox_job.run({**UP, "api-key": API_KEY, "admin-key": "odk_admin_secret_99"}))
    assert API_KEY in up.masks
    assert "odk_admin_secret_99" in up.masks
    assert sandbox_job.token in up.masks
    first_mask = up.log.index(f"::add-mask::{API_KEY}")
    unmasked = up.log.replace(f"::add-mask::{API_KEY}", "")
    assert API_KEY not in unmasked[:first_mask]
    _ok(sandbox_job.run({"command": "down", "provider": "sandbox"}))


def test_export_env_false_leaves_the_job_env_alone(sandbox_job: Runner) -> None:
    up = _ok(sandbox_job.run({**UP, "export-env": "false"}))
    assert up.outputs["url"]
    assert "OLLAMA_HOST" not in up.exported_env
    _ok(sandbox_job.run({"command": "down", "provider": "sandbox"}))


def test_down_with_no_up_in_the_job_finds_nothing_and_succeeds(sandbox_job: Runner) -> None:
    down = _ok(sandbox_job.run({"command": "down", "provider": "sandbox"}))
    assert "nothing to stop" in down.log


def test_a_cancelled_up_has_already_written_what_cleanup_needs(
    job: Runner, start_sandbox: StartSandbox
) -> None:
    # A model that takes 30 s to pull, and a timeout standing in for a cancel: up is
    # stopped while it waits.
    running, _ = start_sandbox(app_env={**FAST_APPS, "OLLAMA_EMULATOR_PULL_SECONDS": "30"})
    sandbox_job = job
    sandbox_job.env["ONDEMAND_SANDBOX_URL"] = running.env["ONDEMAND_SANDBOX_URL"]
    up = sandbox_job.run({**UP, "models": "llama3.2,qwen3:0.6b", "timeout": "2s"})
    assert up.code == 6, up.log
    assert up.outputs["deployment-id"]
    assert up.outputs["url"]
    assert any("timed out" in line or "not ready" in line for line in up.errors()), up.log
    down = _ok(sandbox_job.run({"command": "down", "provider": "sandbox"}))
    assert down.outputs["status"] == "stopped"
    assert "stopped" in down.log


def test_a_missing_or_unknown_command_fails_with_an_annotation(job: Runner) -> None:
    missing = job.run({})
    assert missing.code == 2
    assert missing.errors() == [
        "::error title=ollama-ondemand::the command input is required: one of up down start "
        "stop status deploy delete watchdog reap build"
    ]
    unknown = job.run({"command": "serve"})
    assert unknown.code == 2
    assert "unknown command 'serve'" in unknown.errors()[0]


def test_a_missing_provider_secret_names_the_input_to_set(job: Runner) -> None:
    run = job.run({"command": "status", "provider": "ovh"})
    assert run.code == 4, run.log
    [error] = run.errors()
    assert "OVH_AI_TOKEN is not set" in error
    assert "ovh-token" in error


def test_a_provider_secret_from_the_job_env_still_counts(job: Runner) -> None:
    # No runpod-api-key input: the job's RUNPOD_API_KEY is used, not blanked by the action.
    job.env["RUNPOD_API_KEY"] = "rpa_from_the_job_env"
    job.env["RUNPOD_API_URL"] = "http://127.0.0.1:9"  # nothing listens: a provider error
    run = job.run({"command": "status", "provider": "runpod", "timeout": "2s"})
    assert run.code != 4, run.log
    assert "RUNPOD_API_KEY is not set" not in run.log


def test_action_yml_declares_the_interface_and_keeps_expressions_out_of_scripts() -> None:
    action = load_action()
    assert set(action["inputs"]) == {
        "command", "provider", "name", "config", "models", "image", "gpu", "region",
        "timeout", "idle-timeout", "lease-ttl", "api-key", "admin-key", "ovh-token",
        "runpod-api-key", "runpod-client-key", "github-token", "export-env", "python-version",
    }  # fmt: skip
    assert action["inputs"]["command"]["required"] is True
    assert action["inputs"]["export-env"]["default"] == "true"
    assert set(action["outputs"]) == {
        "url", "openai-url", "api-key", "status", "deployment-id", "lease-id", "cost",
    }  # fmt: skip
    for step in action["runs"]["steps"]:
        assert "${{" not in step.get("run", "")
        if "uses" in step:
            # Third-party actions pinned to a full commit SHA.
            assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


# -- GitHub Deployments, against a fake GitHub REST API on loopback ----------------------


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


def _in_repository(job: Runner, github: FakeGitHub) -> Runner:
    job.token = TOKEN
    job.env |= {
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "GITHUB_API_URL": github.url,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "42",
    }
    return job


def test_up_and_down_track_a_github_deployment(sandbox_job: Runner, github: FakeGitHub) -> None:
    job = _in_repository(sandbox_job, github)
    up = _ok(job.run(UP))
    [deployment] = github.deployments
    assert deployment["environment"] == "ollama-ollama-ondemand"
    assert github.states(deployment["id"]) == ["success", "in_progress"]
    [success] = [s for s in github.statuses[deployment["id"]] if s["state"] == "success"]
    assert success["environment_url"] == up.outputs["url"]
    assert "::warning" not in up.log

    down = _ok(job.run({"command": "down", "provider": "sandbox"}))
    assert github.states(deployment["id"])[0] == "inactive"
    assert "::warning" not in down.log


def test_a_token_without_deployments_write_warns_once_and_up_succeeds(
    sandbox_job: Runner, github: FakeGitHub
) -> None:
    github.deny_deployments = True
    up = _ok(_in_repository(sandbox_job, github).run(UP))
    warnings = [line for line in up.log.splitlines() if line.startswith("::warning")]
    assert len(warnings) == 1, warnings
    assert "deployments: write" in warnings[0]
    assert TOKEN not in warnings[0]
    _ok(sandbox_job.run({"command": "down", "provider": "sandbox"}))


def test_an_empty_github_token_turns_deployments_off_quietly(
    sandbox_job: Runner, github: FakeGitHub
) -> None:
    up = _ok(_in_repository(sandbox_job, github).run({**UP, "github-token": ""}))
    assert github.calls == []
    assert "::warning" not in up.log
    _ok(sandbox_job.run({"command": "down", "provider": "sandbox", "github-token": ""}))


# -- this repository's selftest workflow --------------------------------------------------


def test_the_selftest_workflow_passes(sandbox_job: Runner) -> None:
    # setup-python puts `python` on PATH for the job's scripts.
    sandbox_job.env["PATH"] = f"{Path(sys.executable).parent}:{sandbox_job.env['PATH']}"
    sandbox_job.uses["actions/checkout"] = lambda _: {}
    # Both the workflow's own setup-python and the action's run through this stub.
    sandbox_job.uses["actions/setup-python"] = lambda _: {"python-path": sys.executable}
    # The sandbox already runs (the fixture); installing it from an index is not done here.
    started = 'echo "ONDEMAND_SANDBOX_URL=$ONDEMAND_SANDBOX_URL" >>"$GITHUB_ENV"'
    job = run_workflow_job(
        sandbox_job,
        ROOT / ".github" / "workflows" / "selftest.yml",
        "action",
        replace={"Start the sandbox cloud": started},
    )
    assert job.succeeded, job.log
    assert job.steps == [
        ("actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683", "success"),
        ("actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065", "success"),
        ("Start the sandbox cloud", "success"),
        ("ondemand up", "success"),
        ("Chat through the exported env, check the outputs", "success"),
        ("ondemand down", "success"),
        ("Check that it stopped", "success"),
        ("Sandbox log", "skipped"),
    ]


def test_the_backstops_run_once_from_a_scheduled_step(sandbox_job: Runner) -> None:
    watchdog = _ok(sandbox_job.run({"command": "watchdog", "provider": "sandbox"}))
    assert "### ollama-ondemand: watchdog" in watchdog.summary
    assert "| ollama-ondemand | absent | idle | nothing is billing |" in watchdog.summary
    assert watchdog.outputs["status"] == "0 stopped"
    reap = _ok(sandbox_job.run({"command": "reap", "provider": "sandbox"}))
    assert "### ollama-ondemand: reap" in reap.summary
    assert "| (none) |" in reap.summary


# -- the manual workflow `init` writes ------------------------------------------------------


def test_a_manual_down_days_later_stops_what_a_manual_up_started(
    sandbox_job: Runner, github: FakeGitHub, tmp_path: Path
) -> None:
    """Run workflow: up. Days later, another run of the same workflow: down. Each run is
    its own job, with its own runner and run id; the later down must release the earlier
    up's lease and stop the server, not keep it for a holder that will never come back."""
    from ondemand.scaffold.workflows import ACTION, manual

    workflow = tmp_path / "ollama-manual.yml"
    workflow.write_text(manual("sandbox", "ollama-ondemand"))

    def dispatched(run_id: str, command: str) -> JobRun:
        runner = Runner(
            temp=tmp_path / f"run-{run_id}", env=dict(sandbox_job.env),
            uses={**sandbox_job.uses, "actions/checkout": lambda _: {}},
        )  # fmt: skip
        _installed(runner.temp)
        _in_repository(runner, github)
        runner.env |= {
            "GITHUB_RUN_ID": run_id, "GITHUB_JOB": "ollama", "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_EVENT_NAME": "workflow_dispatch", "GITHUB_WORKFLOW": "ollama manual",
            "ONDEMAND_PROVIDER": "sandbox", "ONDEMAND_MODELS": "llama3.2",
        }  # fmt: skip
        return run_workflow_job(
            runner, workflow, "ollama", inputs={"command": command}, this_action=ACTION
        )

    up = dispatched("1001", "up")
    assert up.succeeded, up.log
    assert "lease lse_" in up.log
    down = dispatched("1077", "down")
    assert down.succeeded, down.log
    assert "stopped ollama-ondemand (no live lease and nothing in flight)" in down.log
    status = dispatched("1078", "status")
    assert "ollama-ondemand (sandbox): stopped" in status.log
    [deployment] = github.deployments
    assert github.states(deployment["id"])[0] == "inactive"


# -- RunPod: the clients' key ----------------------------------------------------------------

CLIENT_KEY = "rpa_restricted_client_key_0123456789"


def _runpod_job(job: Runner, start_sandbox: StartSandbox) -> tuple[Runner, Any]:
    running, _ = start_sandbox(no_worker_wait=3.0)
    job.env |= {k: v for k, v in running.env.items() if k.startswith("RUNPOD_")}
    job.env |= FAST_APPS
    return job, running


RUNPOD_UP = {
    "command": "up", "provider": "runpod", "models": "llama3.2", "timeout": "60s",
    "image": "registry.example.com/team/ollama-ondemand:1.4.0",
}  # fmt: skip


def test_runpod_clients_get_the_restricted_key_and_never_the_account_key(
    job: Runner, start_sandbox: StartSandbox
) -> None:
    job, running = _runpod_job(job, start_sandbox)
    account = job.env.pop("RUNPOD_API_KEY")
    _ok(job.run({**RUNPOD_UP, "command": "deploy", "runpod-api-key": account}))
    # The key the user made in RunPod's console for this endpoint only.
    endpoint = httpx.get(running.url + "/runpod/v2/serverless", headers=running.headers).json()[
        "endpoints"
    ][0]
    running.sandbox.runpod.gateway.restricted[CLIENT_KEY] = {endpoint["id"]}

    up = _ok(job.run({**RUNPOD_UP, "runpod-api-key": account, "runpod-client-key": CLIENT_KEY}))
    assert CLIENT_KEY in up.masks
    assert account in up.masks
    env = up.exported_env
    assert env["RUNPOD_CLIENT_KEY"] == CLIENT_KEY
    assert account not in env.values()
    assert "::warning" not in up.log
    # A later step reaches the model with the restricted key and our key, nothing more.
    headers = {"Authorization": f"Bearer {env['RUNPOD_CLIENT_KEY']}",
               "X-API-Key": env["OLLAMA_API_KEY"]}  # fmt: skip
    with ollama.Client(host=env["OLLAMA_HOST"], headers=headers) as client:
        reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content
    # The restricted key manages nothing.
    restricted = {"Authorization": f"Bearer {CLIENT_KEY}"}
    assert httpx.get(running.url + "/runpod/v2/serverless", headers=restricted).status_code == 401

    job.env.update(env)
    _ok(job.run({"command": "delete", "provider": "runpod", "runpod-api-key": account}))


def test_without_a_client_key_up_warns_and_exports_no_runpod_key(
    job: Runner, start_sandbox: StartSandbox
) -> None:
    job, _ = _runpod_job(job, start_sandbox)
    account = job.env["RUNPOD_API_KEY"]
    up = _ok(job.run(RUNPOD_UP))
    [warning] = [line for line in up.log.splitlines() if line.startswith("::warning")]
    assert "no RunPod client key" in warning
    assert "restricted key" in warning
    assert "RUNPOD_CLIENT_KEY" not in up.exported_env
    assert account not in up.exported_env.values()
    _ok(job.run({"command": "delete", "provider": "runpod"}))
