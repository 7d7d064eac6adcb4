"""The backstops against the sandbox: the watchdog, the reaper and the server's own idle
stop. What never stops a server (a live lease, doubt) and what always does (an expired
lease left by a killed job, the max lifetime). The app servers run a clock 600 times
faster than real time (ONDEMAND_CLOCK_SCALE), so a lease of 120 s ends in 0.2 s."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ondemand.errors import ReadyTimeoutError
from ondemand.fleet import Fleet
from ondemand.leasing import StopCheck, check_stop
from ondemand.lifecycle import admin_key
from ondemand.processes import free_port
from ondemand.providers.base import Deployment, Status
from ondemand.sandbox.server import SandboxServer
from ondemand.watchdog import watch_once
from tests.clirun import run
from tests.cloud import FAST_APPS, Ovh, StartSandbox
from tests.jobs import Job, job_env, lifecycle_of

SCALE = 600


@pytest.fixture
def sandbox(start_sandbox: StartSandbox, tmp_path: Path) -> tuple[SandboxServer, Ovh]:
    return start_sandbox(
        tmp_path / "backstops", app_env={**FAST_APPS, "ONDEMAND_CLOCK_SCALE": str(SCALE)}
    )


def _billable(env: dict[str, str], name: str) -> bool:
    with lifecycle_of(env) as (_, provider):
        return provider.status(name).status.billable


def _wait_stopped(env: dict[str, str], name: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while _billable(env, name):
        assert time.monotonic() < deadline, f"{name} still bills after {seconds}s"
        time.sleep(0.2)


def test_a_job_killed_without_down_lets_its_lease_expire_then_the_watchdog_stops_it(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, _ = sandbox
    env = job_env(running, "orphan", ONDEMAND_LEASE_TTL="1200s")
    killed = Job(env, "org/repo/5/test/1")
    killed.up()
    assert killed.chat()
    with lifecycle_of(env) as (resolved, provider):
        held = watch_once(resolved, provider, idle_seconds=60, max_lifetime_seconds=3600)
        # The runner died: no down. Its lease lives on for its TTL on the server's clock ...
        assert (held.action, held.reason) == ("kept", "1 live lease(s): org/repo/5/test/1")
        time.sleep(2.2)  # 1320 s on the server's clock
        # ... and then nothing holds the server: it is idle, and it stops.
        verdict = watch_once(resolved, provider, idle_seconds=60, max_lifetime_seconds=3600)
    assert verdict.action == "stopped", verdict
    assert "idle" in verdict.reason
    assert not _billable(env, "orphan")
    assert not killed.chat()


def test_the_server_stops_its_own_deployment_once_no_lease_is_left(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, _ = sandbox
    env = job_env(
        running, "selfstop", ONDEMAND_SELF_STOP="true", ONDEMAND_IDLE_TIMEOUT="60s",
        ONDEMAND_LEASE_TTL="1800s",
    )  # fmt: skip
    job = Job(env, "org/repo/6/test/1")
    job.up()
    assert job.chat()
    time.sleep(0.2)  # 120 s of server time: idle, but the lease holds it
    assert _billable(env, "selfstop")
    assert job.chat()
    # The job is killed here; its lease ends within 1800 s (3 s), and 60 s after that the
    # server stops its deployment through the sandbox's API, with no runner left.
    _wait_stopped(env, "selfstop")
    apps = httpx.get(running.url + "/_sandbox/apps", timeout=5).json()["apps"]
    [app] = [a for a in apps if a["name"] == "selfstop"]
    assert "stopping this deployment through the provider: idle" in Path(app["log"]).read_text()


def test_activity_that_cannot_be_read_counts_as_active_until_the_max_lifetime(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, _ = sandbox
    env = job_env(running, "doubt")
    Job(env, "org/repo/7/test/1").up(lease=False)
    blind = {**env, "ONDEMAND_ADMIN_KEY": "odk_not_the_admin_key_of_this_server"}
    with lifecycle_of(blind) as (resolved, provider):
        kept = watch_once(resolved, provider, idle_seconds=0, max_lifetime_seconds=3600)
        assert kept.action == "kept"
        assert "cannot be read" in kept.reason
        assert "counted as active" in kept.reason
        time.sleep(1.1)
        old = watch_once(resolved, provider, idle_seconds=0, max_lifetime_seconds=1)
    assert old.action == "stopped"
    assert old.reason.startswith("past its max lifetime")
    assert not _billable(env, "doubt")


def test_reap_stops_lease_less_deployments_across_names_and_its_dry_run_stops_nothing(
    sandbox: tuple[SandboxServer, Ovh],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, _ = sandbox
    held = Job(job_env(running, "held"), "org/repo/8/test/1")
    held.up()
    Job(job_env(running, "forgotten"), "org/repo/9/test/1").up(lease=False)
    for name, value in job_env(running, "any").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ONDEMAND_ADMIN_KEY", raising=False)

    code, out, err = run(["reap", "--older-than", "0s", "--dry-run"], capsys)
    assert code == 0, err
    lines = sorted(out.splitlines())
    assert lines[0].startswith("forgotten: would stop (no live lease, nothing in flight)")
    assert lines[1] == "held: kept (1 live lease(s))"
    assert "would save 0.95 EUR/h in all" in out
    assert _billable(job_env(running, "forgotten"), "forgotten")

    code, out, err = run(["--json", "reap", "--older-than", "0s"], capsys)
    assert code == 0, err
    actions = {d["name"]: d["action"] for d in json.loads(out)["deployments"]}
    assert actions == {"forgotten": "stopped", "held": "kept"}
    assert not _billable(job_env(running, "forgotten"), "forgotten")
    assert held.chat()

    code, out, _ = run(["reap", "--older-than", "12h"], capsys)
    assert code == 0
    assert re.search(r"held: kept \(running \d+s, not past 12\.0 h\)", out), out


def test_watchdog_command_once_reports_and_stops_an_idle_deployment(
    sandbox: tuple[SandboxServer, Ovh],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, _ = sandbox
    env = job_env(running, "idle")
    Job(env, "org/repo/10/test/1").up(lease=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(["watchdog", "--once", "--idle", "30m"], capsys)
    assert code == 0, err
    assert out.startswith("idle: kept (idle ")
    time.sleep(0.2)  # 2 min on the server's 600x clock: past 1 min of idle, not 30
    code, out, err = run(["watchdog", "--once", "--idle", "1m"], capsys)
    assert code == 0, err
    assert out.startswith("idle: stopped (idle, no live lease (watchdog))")
    assert "saves 0.95 EUR/h" in out
    code, out, _ = run(["watchdog", "--once"], capsys)
    assert out.startswith("idle: idle (nothing is billing)")


def test_down_does_not_stop_a_server_it_cannot_ask_unless_past_its_max_lifetime() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    now = datetime.now(UTC)
    deployment = Deployment(id="x", name="x", status=Status.RUNNING, url=url,
                            running_since=now - timedelta(hours=2))  # fmt: skip

    def ask(max_lifetime: float) -> StopCheck:
        return check_stop(
            deployment,
            admin_key="odk_admin",
            headers={},
            lease_ids=[],
            holder="job",
            drain_seconds=60,
            max_lifetime_seconds=max_lifetime,
        )

    unsure = ask(8 * 3600)
    assert not unsure.stop
    assert "did not answer" in unsure.message
    assert "'ondemand down --force' stops it now" in unsure.message
    old = ask(3600)
    assert old.stop
    assert old.message.startswith("past its max lifetime")


def test_lease_expiry_is_the_servers_whatever_the_runners_clock_says(
    sandbox: tuple[SandboxServer, Ovh], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, _ = sandbox
    env = job_env(running, "skew", ONDEMAND_LEASE_TTL="3h")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 5 * 3600)  # the runner is 5 h ahead
    job = Job(env, "org/repo/11/test/1")
    result = job.up()
    assert result.lease is not None
    assert 3 * 3600 - 600 < result.lease.expires_in_seconds <= 3 * 3600
    assert job.chat()
    down = job.down()
    [released] = down.released
    assert 0 <= float(released["held_seconds"]) < 3600


def test_an_up_that_fails_after_taking_its_lease_gives_it_back(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    running, _ = start_sandbox(
        tmp_path / "slow", app_env={**FAST_APPS, "OLLAMA_EMULATOR_PULL_SECONDS": "30"}
    )
    env = job_env(running, "slow", ONDEMAND_MODELS="llama3.2,qwen3:0.6b", ONDEMAND_TIMEOUT="4s")
    with pytest.raises(ReadyTimeoutError) as failed:
        Job(env, "org/repo/12/test/1").up()
    apps = httpx.get(running.url + "/_sandbox/apps", timeout=5).json()["apps"]
    log = Path(next(a["log"] for a in apps if a["name"] == "slow")).read_text()
    assert "POST '/ondemand/leases' 201" in log  # it had taken one while it waited
    assert "DELETE '/ondemand/leases/lse_" in log
    # It had started the server itself, so it stopped it again: nothing is left billing.
    assert "Afterwards: stopped slow again: this up had started it" in str(failed.value)
    assert not _billable(env, "slow")


def test_an_idle_replica_does_not_stop_the_app_while_another_serves(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """Two replicas, each with its own in-server idle stop: one sits idle while the other
    streams an answer to a client without a lease. The idle one asks every replica through
    the app's URL before it stops anything, so the app runs until the stream ends."""
    # A line every 100 ms: the status read after each one (some 30 ms) never falls behind.
    slow = {"OLLAMA_EMULATOR_TOKENS_PER_SECOND": "10", "OLLAMA_EMULATOR_RESPONSE_TOKENS": "40"}
    running, _ = start_sandbox(
        tmp_path / "pair", app_env={**FAST_APPS, **slow, "ONDEMAND_CLOCK_SCALE": str(SCALE)}
    )
    env = job_env(
        running, "pair", ONDEMAND_SELF_STOP="true", ONDEMAND_IDLE_TIMEOUT="60s",
        ONDEMAND_OVH_REPLICAS="2",
    )  # fmt: skip
    job = Job(env, "org/repo/7/test/1")
    result = job.up()
    assert result.lease is not None
    deadline = time.monotonic() + 20
    while (replicas := _deployment(env, "pair").replicas) != 2:
        assert time.monotonic() < deadline, replicas
        time.sleep(0.05)
    lines: list[str] = []
    with httpx.stream(
        "POST", result.url + "/api/chat", headers={"X-API-Key": result.api_key or ""},
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}, timeout=30,
    ) as stream:  # fmt: skip
        chunks = stream.iter_lines()
        lines.append(next(chunks))
        first_line_at = datetime.now(UTC)
        # The lease goes (from every replica): only the stream keeps the app now, on one of
        # the two replicas; the other is idle at once (60 s of server time is 0.1 s here).
        with lifecycle_of(env) as (resolved, provider):
            key = admin_key(resolved, provider, "pair") or ""
        lease_id = result.lease.id
        with Fleet(result.url, key, replicas=2) as fleet:
            released = fleet.each(lambda api: api.release(lease_id))
        assert released.complete
        lines.extend(chunks)
    # All 40 tokens (4 s), not cut short by the idle replica.
    assert len(lines) > 40
    assert json.loads(lines[-1])["done"] is True
    _wait_stopped(env, "pair")
    apps = httpx.get(running.url + "/_sandbox/apps", timeout=5).json()["apps"]
    [app] = [a for a in apps if a["name"] == "pair"]
    # Not even asked to stop while the answer streamed (STOPPING would let it finish, as
    # the server drains, but the idle replica must not have decided to stop): the stop came
    # after the server wrote its last line, 3.9 s of pacing after the first. Read from the
    # app's history, not while reading the stream, which a busy client reads behind.
    [stopping] = [h["date"] for h in app["history"] if h["state"] == "STOPPING"]
    streamed = datetime.fromisoformat(stopping.replace("Z", "+00:00")) - first_line_at
    assert streamed.total_seconds() > 3.8, app["history"]
    logs = "".join(log.read_text() for log in Path(app["log"]).parent.glob("serve*.log"))
    assert "(every replica)" in logs


def _deployment(env: dict[str, str], name: str) -> Deployment:
    with lifecycle_of(env) as (_, provider):
        return provider.status(name)
