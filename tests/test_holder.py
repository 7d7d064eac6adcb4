"""Who holds a lease: the name a job's cleanup uses to find its own lease."""

from __future__ import annotations

import os

from ondemand.serverapi import holder_name

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


def test_elsewhere_each_shell_is_its_own_holder() -> None:
    name = holder_name({"GITHUB_JOB": "test"})  # not in Actions: its variables do not count
    user_host, _, shell = name.rpartition("/")
    assert "@" in user_host
    assert shell == str(os.getppid())
