"""RunPod's refusals and renames, against the sandbox over loopback: a pod create that
cannot be placed, cannot be paid or may not use its GPU each has its own message and exit,
and an endpoint whose name RunPod changed is still found by our labels."""

from __future__ import annotations

import time

import pytest

from ondemand.errors import UnhealthyError
from ondemand.lifecycle import deploy
from ondemand.providers.runpod import init_timeout
from ondemand.sandbox.server import SandboxServer
from tests.clirun import run
from tests.providers.test_runpod import Cloud, cloud  # noqa: F401 (the fixture)
from tests.providers.test_runpod_pod import _faults, _pods, sandbox  # noqa: F401


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        ("no_capacity", 5, ["HTTP 400", "no machine free", "try again later"]),
        ("insufficient_balance", 3, ["HTTP 402", "balance is too low", "add funds"]),
        ("pool_forbidden", 4, ["HTTP 403", "may not use this GPU", "pick another GPU"]),
    ],
)
def test_a_refused_pod_create_says_why_and_exits_with_its_own_code(
    sandbox: SandboxServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    fault: str,
    code: int,
    words: list[str],
) -> None:
    _faults(sandbox, **{fault: 1})
    exit_code, _, err = run(["deploy"], capsys)
    assert exit_code == code, err
    for word in words:
        assert word in err
    assert "fix the setting" not in err
    assert _pods(sandbox) == []
    # Refused once: the next deploy places it.
    assert run(["deploy"], capsys)[0] == 0
    assert len(_pods(sandbox)) == 1


def test_an_endpoint_renamed_with_a_flashboot_suffix_is_still_ours(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    cloud.faults(flashboot_rename=1)
    assert run(["deploy"], capsys)[0] == 0
    [endpoint] = cloud.endpoints()
    assert endpoint["name"] == "ollama-ondemand -fb"
    # A second deploy finds it (no second endpoint), and so do up, status and delete.
    code, out, err = run(["deploy"], capsys)
    assert code == 0, err
    assert "unchanged" in out
    [again] = cloud.endpoints()
    assert again["id"] == endpoint["id"]
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    assert [e["id"] for e in cloud.endpoints()] == [endpoint["id"]]
    code, out, _ = run(["--json", "status"], capsys)
    assert code == 0
    assert '"status": "running"' in out
    assert run(["delete"], capsys)[0] == 0
    assert cloud.endpoints() == []


# -- RunPod's catalog, not a fixed list, says what exists ------------------------------------


@pytest.mark.parametrize("data_center", ["US-MD-1", "US-MO-1", "US-MO-2", "US-NC-2", "US-NE-1",
                                         "US-KS-1", "US-OR-1"])  # fmt: skip
def test_newer_data_centers_with_volumes_are_accepted(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_center: str,
) -> None:
    monkeypatch.setenv("ONDEMAND_RUNPOD_NETWORK_VOLUME", f"models@{data_center}")
    code, _, err = run(["deploy"], capsys)
    assert code == 0, err
    assert "catalog lists no" not in err
    [endpoint] = cloud.endpoints()
    assert endpoint["dataCenterIds"] == [data_center]


def test_ids_the_catalog_lacks_are_sent_with_a_warning_and_runpod_decides(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ONDEMAND_RUNPOD_DATA_CENTERS", "US-KS-2,XX-NEW-1")
    code, _, err = run(["deploy"], capsys)
    [warning] = [r.getMessage() for r in caplog.records if "catalog lists no" in r.getMessage()]
    assert "data center 'XX-NEW-1'; sending it anyway" in warning
    # It was sent: the refusal is RunPod's own (the sandbox's catalog is all it knows).
    assert code == 2, err
    assert "RunPod refused to create the endpoint: unknown data center 'XX-NEW-1'" in err


# -- starts longer than RunPod's start limit ---------------------------------------------------


def test_the_start_limit_follows_the_timeout_and_a_slow_start_is_not_called_a_crash(
    cloud: Cloud,  # noqa: F811
) -> None:
    # A worker floor: workers start without a request to wake them.
    provider, _, resolved = cloud.provider(ONDEMAND_TIMEOUT="20m", ONDEMAND_RUNPOD_WORKERS_MIN="1")
    deploy(resolved, provider)
    [endpoint] = cloud.endpoints()
    assert endpoint["env"]["RUNPOD_INIT_TIMEOUT"] == "1200"
    # Workers that go unhealthy again and again while nothing has been ready for longer
    # than the start limit: each was replaced for starting too long (a large first pull).
    cloud.faults(crash=50)
    now = [1000.0]
    provider.clock = lambda: now[0]
    provider.start(resolved.config.name)
    problem = None
    deadline = time.monotonic() + 30
    while problem is None and time.monotonic() < deadline:
        now[0] += 300  # each look five minutes after the last, as during a long pull
        state = provider.status(resolved.config.name)
        problem = provider.readiness_problem(state, None)
        time.sleep(0.1)
    assert isinstance(problem, UnhealthyError), problem
    assert "workers restart during a long first start" in problem.message
    assert "1200s, RUNPOD_INIT_TIMEOUT" in problem.message
    assert "crash" not in problem.render()
    provider.stop(resolved.config.name)


@pytest.mark.parametrize(("timeout", "limit"), [(30, 420), (600, 600), (601, 900), (3600, 3600)])
def test_the_start_limit_is_never_below_runpods_own_and_moves_in_five_minutes(
    timeout: float, limit: int
) -> None:
    assert init_timeout(timeout) == limit


# -- a pod's storage, and the labels of a run -------------------------------------------------


def test_a_bigger_pod_volume_is_applied_and_another_kind_is_refused(
    sandbox: SandboxServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run(["deploy"], capsys)[0] == 0
    [pod] = _pods(sandbox)
    assert pod["mounts"]["persistent"]["size"] == 50
    monkeypatch.setenv("ONDEMAND_RUNPOD_POD_VOLUME", "80")
    code, out, err = run(["deploy"], capsys)
    assert code == 0, err
    assert "updated" in out
    [pod] = _pods(sandbox)
    assert pod["mounts"]["persistent"]["size"] == 80
    # A network volume cannot replace the volume disk of an existing pod: refused, and
    # the pod's spec label still says what it runs.
    spec = pod["env"]["ONDEMAND_LABEL_SPEC"]
    monkeypatch.setenv("ONDEMAND_RUNPOD_NETWORK_VOLUME", "models@EU-RO-1")
    code, _, err = run(["deploy"], capsys)
    assert code == 2, err
    assert "RunPod cannot change on an existing pod" in err
    assert "'ondemand delete' then 'ondemand up'" in err
    [pod] = _pods(sandbox)
    assert pod["env"]["ONDEMAND_LABEL_SPEC"] == spec
    assert "network" not in pod["mounts"]


def test_the_repo_and_run_id_labels_are_set_and_a_new_run_alone_changes_nothing(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo-org/llm-tests")
    monkeypatch.setenv("GITHUB_RUN_ID", "1001")
    assert run(["deploy"], capsys)[0] == 0
    [endpoint] = cloud.endpoints()
    assert endpoint["env"]["ONDEMAND_LABEL_REPO"] == "octo-org.llm-tests"
    assert endpoint["env"]["ONDEMAND_LABEL_RUN_ID"] == "1001"
    monkeypatch.setenv("GITHUB_RUN_ID", "1002")
    code, out, _ = run(["deploy"], capsys)
    assert code == 0
    assert "unchanged" in out
    provider, _, _ = cloud.provider()
    found = provider.find("ollama-ondemand")
    assert found is not None
    assert found.labels["repo"] == "octo-org.llm-tests"
    assert found.labels["run-id"] == "1001"  # the run that created it
