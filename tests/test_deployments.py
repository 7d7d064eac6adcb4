"""GitHub Deployments of ``ollama-<name>``, against a fake GitHub REST API on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ondemand.deployments import MAX_DESCRIPTION, GithubDeployments
from ondemand.processes import free_port
from tests.github_fake import REPOSITORY, TOKEN, FakeGitHub

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
RUN_URL = f"https://github.com/{REPOSITORY}/actions/runs/4242"
SERVER_URL = "https://ollama-ci.example.net"
DEPLOYMENTS = f"/repos/{REPOSITORY}/deployments"
ROOT = Path(__file__).resolve().parent.parent
PREVIEWS = "application/vnd.github.ant-man-preview+json, application/vnd.github.flash-preview+json"


def actions_env(api_url: str, **extra: str) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_SHA": SHA,
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_API_URL": api_url,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "4242",
        **extra,
    }


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture
def warnings() -> list[str]:
    return []


def deployments(
    github: FakeGitHub, warnings: list[str], token: str | None = TOKEN, **env: str
) -> GithubDeployments:
    made = GithubDeployments.from_env(
        actions_env(github.url, **env), token, "ci", warnings.append, provider="runpod"
    )
    assert made is not None
    return made


def bodies(github: FakeGitHub) -> list[Any]:
    return [call.body for call in github.calls]


# -- the up path -----------------------------------------------------------------------


def test_up_creates_one_deployment_in_progress_then_success(
    github: FakeGitHub, warnings: list[str]
) -> None:
    up = deployments(github, warnings)
    up.started("starting ollama-ci on runpod")
    up.ready(SERVER_URL, "ollama-ci is up")

    status_path = f"{DEPLOYMENTS}/1/statuses"
    # No GET /repos/{owner}/{repo} first: the repository object is lazy.
    assert github.routes() == [
        ("POST", DEPLOYMENTS),
        ("POST", status_path),
        ("POST", status_path),
    ]
    assert bodies(github) == [
        {
            "ref": SHA,
            "task": "deploy",
            "auto_merge": False,
            "required_contexts": [],
            "payload": {"name": "ci", "provider": "runpod"},
            "environment": "ollama-ci",
            "description": "starting ollama-ci on runpod",
            "transient_environment": True,
            "production_environment": False,
        },
        {"state": "in_progress", "description": "starting ollama-ci on runpod", "log_url": RUN_URL},
        {
            "state": "success",
            "description": "ollama-ci is up",
            "log_url": RUN_URL,
            "environment_url": SERVER_URL,
            "auto_inactive": True,
        },
    ]
    assert all(call.query == {} for call in github.calls)
    assert all(call.headers["authorization"] == f"token {TOKEN}" for call in github.calls)
    assert all(call.headers["user-agent"].startswith("ollama-ondemand/") for call in github.calls)
    # in_progress and inactive once needed these preview media types; PyGithub still sends them.
    assert github.calls[0].headers["accept"] == "application/vnd.github.ant-man-preview+json"
    assert [call.headers["accept"] for call in github.calls[1:]] == [PREVIEWS, PREVIEWS]

    [deployment] = github.deployments
    assert deployment["environment"] == "ollama-ci"
    assert deployment["sha"] == SHA
    assert github.states(1) == ["success", "in_progress"]
    success = github.statuses[1][-1]
    assert success["environment_url"] == SERVER_URL
    assert success["log_url"] == success["target_url"] == RUN_URL
    assert warnings == []


def test_descriptions_are_cut_to_githubs_limit(github: FakeGitHub, warnings: list[str]) -> None:
    up = deployments(github, warnings)
    up.started("x" * 500)
    up.ready(SERVER_URL, "line one\nline two  spaced")

    assert warnings == []  # the fake answers 422 past 140 characters, as GitHub does
    created, in_progress, success = bodies(github)
    assert len(created["description"]) == len(in_progress["description"]) == MAX_DESCRIPTION
    assert in_progress["description"].endswith("…")
    assert success["description"] == "line one line two spaced"


def test_up_then_down_in_one_process_marks_its_own_deployment(
    github: FakeGitHub, warnings: list[str]
) -> None:
    github.add_deployment("ollama-ci", "success")  # an older run's: left to the scan of a `down`
    lifecycle = deployments(github, warnings)
    lifecycle.started("starting")
    lifecycle.ready(SERVER_URL, "up")
    lifecycle.stopped("stopped by watchdog")

    mine = github.deployments[-1]["id"]
    assert github.routes()[-1] == ("POST", f"{DEPLOYMENTS}/{mine}/statuses")
    assert github.calls[-1].body == {
        "state": "inactive",
        "description": "stopped by watchdog",
        "log_url": RUN_URL,
    }
    assert [call.method for call in github.calls] == ["POST"] * 4  # no listing
    assert github.states(mine) == ["inactive", "success", "in_progress"]
    assert warnings == []


# -- a later `down` --------------------------------------------------------------------


def test_down_marks_the_latest_deployment_of_the_environment_inactive(
    github: FakeGitHub, warnings: list[str]
) -> None:
    other = github.add_deployment("ollama-other", "success")
    latest = github.add_deployment("ollama-ci", "in_progress", "success")

    deployments(github, warnings).stopped("ollama-ci stopped")

    assert github.routes() == [
        ("GET", DEPLOYMENTS),
        ("GET", f"{DEPLOYMENTS}/{latest['id']}/statuses"),
        ("POST", f"{DEPLOYMENTS}/{latest['id']}/statuses"),
    ]
    assert github.calls[0].query == {"environment": "ollama-ci", "per_page": "10"}
    assert github.calls[2].body == {
        "state": "inactive",
        "description": "ollama-ci stopped",
        "log_url": RUN_URL,
    }
    assert github.states(latest["id"]) == ["inactive", "success", "in_progress"]
    assert github.states(other["id"]) == ["success"]
    assert warnings == []


def test_down_posts_nothing_when_the_latest_is_already_inactive(
    github: FakeGitHub, warnings: list[str]
) -> None:
    latest = github.add_deployment("ollama-ci", "success", "inactive")

    deployments(github, warnings).stopped("ollama-ci stopped")

    assert github.routes() == [
        ("GET", DEPLOYMENTS),
        ("GET", f"{DEPLOYMENTS}/{latest['id']}/statuses"),
    ]
    assert github.states(latest["id"]) == ["inactive", "success"]
    assert warnings == []


def test_down_without_any_deployment_does_nothing(github: FakeGitHub, warnings: list[str]) -> None:
    github.add_deployment("ollama-other", "success")

    deployments(github, warnings).stopped("ollama-ci stopped")

    assert github.routes() == [("GET", DEPLOYMENTS)]
    assert warnings == []


def test_down_also_marks_older_deployments_left_active(
    github: FakeGitHub, warnings: list[str]
) -> None:
    # Transient deployments are not touched by GitHub's auto_inactive, so an up whose down
    # never ran (a cancelled job) stays "active" until a down marks it.
    forgotten = github.add_deployment("ollama-ci", "in_progress", "success")
    stopped = github.add_deployment("ollama-ci", "success", "inactive")
    no_status = github.add_deployment("ollama-ci")
    failed = github.add_deployment("ollama-ci", "in_progress", "failure")

    deployments(github, warnings).stopped("down")

    posted = [call.path for call in github.calls if call.method == "POST"]
    assert posted == [
        f"{DEPLOYMENTS}/{failed['id']}/statuses",
        f"{DEPLOYMENTS}/{no_status['id']}/statuses",
        f"{DEPLOYMENTS}/{forgotten['id']}/statuses",
    ]
    assert github.states(stopped["id"]) == ["inactive", "success"]
    assert all(github.states(d["id"])[0] == "inactive" for d in github.deployments)
    assert warnings == []


def test_down_follows_pages_no_further_than_the_newest_ten(
    github: FakeGitHub, warnings: list[str]
) -> None:
    seeded = [github.add_deployment("ollama-ci", "success") for _ in range(12)]

    deployments(github, warnings).stopped("down")

    newest_ten = {d["id"] for d in seeded[2:]}
    marked = {d["id"] for d in seeded if github.states(d["id"])[0] == "inactive"}
    assert marked == newest_ten
    assert [call.query for call in github.calls if call.path == DEPLOYMENTS] == [
        {"environment": "ollama-ci", "per_page": "10"}
    ]
    assert warnings == []


# -- failures of the server ------------------------------------------------------------


def test_failed_marks_the_deployment_failure(github: FakeGitHub, warnings: list[str]) -> None:
    up = deployments(github, warnings)
    up.started("starting")
    up.failed("ollama-ci did not become ready in 20m")

    assert github.routes()[-1] == ("POST", f"{DEPLOYMENTS}/1/statuses")
    assert github.calls[-1].body == {
        "state": "failure",
        "description": "ollama-ci did not become ready in 20m",
        "log_url": RUN_URL,
    }
    assert github.states(1) == ["failure", "in_progress"]
    assert warnings == []


def test_failed_without_started_creates_the_deployment_first(
    github: FakeGitHub, warnings: list[str]
) -> None:
    deployments(github, warnings).failed("the provider refused the GPU")

    assert github.routes() == [("POST", DEPLOYMENTS), ("POST", f"{DEPLOYMENTS}/1/statuses")]
    assert github.states(1) == ["failure"]
    assert warnings == []


# -- failures of GitHub: one warning, never an exception -------------------------------


def test_no_deployments_permission_warns_once_and_goes_silent(
    github: FakeGitHub, warnings: list[str]
) -> None:
    github.deny_deployments = True
    up = deployments(github, warnings)
    up.started("starting")
    up.ready(SERVER_URL, "up")
    up.failed("failed")
    up.stopped("down")

    assert github.routes() == [("POST", DEPLOYMENTS)]  # nothing after the refusal
    [warning] = warnings
    assert "ollama-ci" in warning
    assert "403: Resource not accessible by integration" in warning
    assert "`permissions: deployments: write`" in warning
    assert "github-token: ''" in warning
    assert TOKEN not in warning


def test_bad_token_warns_once(github: FakeGitHub, warnings: list[str]) -> None:
    wrong = "ghp_wrongTokenWrongTokenWrongToken0123"
    up = deployments(github, warnings, token=wrong)
    up.started("starting")
    up.stopped("down")

    assert github.routes() == [("POST", DEPLOYMENTS)]
    assert github.calls[0].headers["authorization"] == f"token {wrong}"
    [warning] = warnings
    assert "401: Bad credentials" in warning
    assert wrong not in warning


def test_bad_token_on_a_later_down_warns_once(github: FakeGitHub, warnings: list[str]) -> None:
    github.add_deployment("ollama-ci", "success")
    down = deployments(github, warnings, token="ghp_revoked000000000000000000000000000")
    down.stopped("down")
    down.stopped("down again")

    assert github.routes() == [("GET", DEPLOYMENTS)]
    [warning] = warnings
    assert warning.startswith("could not deactivate the GitHub Deployment for ollama-ci (401")


def test_unreachable_github_warns_once_quickly(warnings: list[str]) -> None:
    port = free_port()
    # Nothing listens on the port: connections are refused.
    made = GithubDeployments.from_env(
        actions_env(f"http://127.0.0.1:{port}"), TOKEN, "ci", warnings.append
    )
    assert made is not None

    began = time.monotonic()
    made.started("starting")
    made.ready(SERVER_URL, "up")
    made.stopped("down")

    assert time.monotonic() - began < 3
    [warning] = warnings
    assert f"http://127.0.0.1:{port} unreachable" in warning
    assert TOKEN not in warning


def test_a_github_that_never_answers_costs_one_timeout(
    warnings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ondemand.deployments.TIMEOUT_SECONDS", 1)
    with socket.socket() as silent:
        # The kernel completes the handshakes; nobody ever reads or answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        made = GithubDeployments.from_env(
            actions_env(f"http://127.0.0.1:{port}"), TOKEN, "ci", warnings.append
        )
        assert made is not None

        began = time.monotonic()
        made.started("starting")
        made.ready(SERVER_URL, "up")
        made.stopped("down")
        elapsed = time.monotonic() - began

    assert 0.9 < elapsed < 3  # one timeout, no retry, then silence
    [warning] = warnings
    assert f"http://127.0.0.1:{port} did not answer within 1 s: ReadTimeout" in warning


def test_github_enterprise_api_under_a_path(warnings: list[str]) -> None:
    # GHES serves the API under /api/v3 and returns URLs that include it.
    with FakeGitHub(prefix="/api/v3") as github:
        up = deployments(github, warnings)
        up.started("starting")
        up.ready(SERVER_URL, "up")
        deployments(github, warnings).stopped("down")

        assert github.states(1) == ["inactive", "success", "in_progress"]
        assert warnings == []


# -- from_env ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"GITHUB_ACTIONS": "false", "GITHUB_REPOSITORY": REPOSITORY, "GITHUB_SHA": SHA},
        {"GITHUB_REPOSITORY": REPOSITORY, "GITHUB_SHA": SHA},
        {"GITHUB_ACTIONS": "true", "GITHUB_SHA": SHA},
        {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": REPOSITORY},
    ],
)
def test_outside_actions_nothing_at_all(
    github: FakeGitHub, warnings: list[str], env: dict[str, str]
) -> None:
    env = {**env, "GITHUB_API_URL": github.url}
    assert GithubDeployments.from_env(env, TOKEN, "ci", warnings.append) is None
    assert github.calls == []
    assert warnings == []


def test_in_actions_without_a_token_warns_once(github: FakeGitHub, warnings: list[str]) -> None:
    assert GithubDeployments.from_env(actions_env(github.url), None, "ci", warnings.append) is None
    [warning] = warnings
    assert warning.startswith("no github-token: skipping the GitHub Deployment of ollama-ci")
    assert "deployments: write" in warning
    assert github.calls == []


@pytest.mark.parametrize("token", ["", "  "])
def test_an_empty_token_turns_it_off_silently(
    github: FakeGitHub, warnings: list[str], token: str
) -> None:
    assert GithubDeployments.from_env(actions_env(github.url), token, "ci", warnings.append) is None
    assert warnings == []
    assert github.calls == []


def test_from_env_reads_the_run(warnings: list[str]) -> None:
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "corp/app",
        "GITHUB_REF": "refs/heads/feature",
        "GITHUB_API_URL": "https://ghe.corp.example/api/v3/",
        "GITHUB_SERVER_URL": "https://ghe.corp.example",
        "GITHUB_RUN_ID": "77",
    }
    made = GithubDeployments.from_env(env, f" {TOKEN}\n", "gpu-1", warnings.append)
    assert made is not None
    assert made.environment == "ollama-gpu-1"
    assert made.repository == "corp/app"
    assert made.ref == "refs/heads/feature"  # no GITHUB_SHA: the ref
    assert made.api_url == "https://ghe.corp.example/api/v3"
    assert made.log_url == "https://ghe.corp.example/corp/app/actions/runs/77"

    defaults = GithubDeployments.from_env(
        {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "corp/app", "GITHUB_SHA": SHA},
        TOKEN,
        "x",
        warnings.append,
    )
    assert defaults is not None
    assert defaults.api_url == "https://api.github.com"
    assert defaults.log_url is None  # no run id: no link
    assert warnings == []


# -- import cost -------------------------------------------------------------------------


def test_the_module_does_not_import_pygithub() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import ondemand.deployments, sys; print('github' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "False"
