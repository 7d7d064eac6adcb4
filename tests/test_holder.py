"""Who holds a lease: the name a job's cleanup uses to find its own lease."""

from __future__ import annotations

from ondemand.holders import holder_name

ACTIONS = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "org/repo",
    "GITHUB_RUN_ID": "123",
    "GITHUB_JOB": "test",
    "GITHUB_RUN_ATTEMPT": "2",
}


def test_in_actions_a_job_is_its_repo_run_job_and_attempt() -> None:
    assert holder_name(ACTIONS) == "org/repo/123/test/2"
    assert holder_name({**ACTIONS, "ONDEMAND_LEASE_HOLDER": " nightly-eval "}) == "nightly-eval"


def test_a_manual_run_is_one_holder_across_runs() -> None:
    manual = {**ACTIONS, "GITHUB_EVENT_NAME": "workflow_dispatch", "GITHUB_WORKFLOW": "ollama"}
    later = {**manual, "GITHUB_RUN_ID": "456", "GITHUB_JOB": "down"}
    assert holder_name(manual) == holder_name(later) == "org/repo/manual/ollama"
    assert holder_name({**ACTIONS, "GITHUB_EVENT_NAME": "push"}) == "org/repo/123/test/2"


def test_elsewhere_the_holder_is_the_user_on_this_host_for_this_deployment() -> None:
    name = holder_name({"GITHUB_JOB": "test"}, "ci-models")  # not in Actions
    user_host, _, deployment = name.rpartition("/")
    assert "@" in user_host
    assert deployment == "ci-models"
    # The same from any process of this user: a script's $(...) or another shell.
    assert holder_name({}, "ci-models") == name
