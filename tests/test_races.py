"""Jobs racing each other on one deployment: one job's cleanup must never stop the server
another job holds a lease on, and a job that loses a race gets the server all the same."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import pytest

from ondemand.leasing import check_stop
from ondemand.lifecycle import admin_key, stop_and_verify
from ondemand.sandbox.server import SandboxServer
from ondemand.watchdog import watch_once
from tests.cloud import FAST_APPS, Ovh, StartSandbox
from tests.jobs import CHAT, Job, job_env, lifecycle_of, run_threads

# More rounds find rarer interleavings: ONDEMAND_RACE_ROUNDS=50 pytest tests/test_races.py
ROUNDS = int(os.environ.get("ONDEMAND_RACE_ROUNDS", "3"))


@pytest.fixture
def sandbox(start_sandbox: StartSandbox, tmp_path: Path) -> tuple[SandboxServer, Ovh]:
    return start_sandbox(tmp_path / "races")


def _history(api: Ovh, name: str) -> list[str]:
    [app] = [a for a in api.http.get("/v1/app").json()["items"] if a["spec"]["name"] == name]
    return [entry["state"] for entry in app["status"]["history"]]


def test_a_lease_taken_while_a_cleanup_drains_waits_and_gets_the_server_again(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, api = sandbox
    env = job_env(running, "drained")
    a, b = Job(env, "org/repo/1/a/1"), Job(env, "org/repo/2/b/1")
    a.up()
    assert a.chat()
    # A's cleanup, in its two steps: the server agrees to drain (releasing A's lease) ...
    with lifecycle_of(env) as (resolved, provider):
        deployment = provider.status("drained")
        check = check_stop(
            deployment, admin_key=admin_key(resolved, provider, "drained"), headers={},
            lease_ids=[a.result.lease.id] if a.result and a.result.lease else [],
            holder=a.holder, drain_seconds=60, max_lifetime_seconds=3600,
        )  # fmt: skip
        assert check.stop, check.message
        assert check.drained_via is not None
        check.drained_via.close()
        # ... B's up arrives between the decision and the stop: it is refused a lease ...
        b_up = threading.Thread(target=b.up)
        b_up.start()
        time.sleep(0.5)
        assert b_up.is_alive()  # waiting for the server to stop, to start it again
        # ... then A stops the deployment, and B starts it again and takes its lease.
        stop_and_verify(resolved, provider, "drained")
    b_up.join(60)
    assert b.result is not None
    assert b.result.lease is not None
    assert b.chat()
    assert _history(api, "drained").count("STOPPED") >= 1
    assert b.down().was_running


def test_a_lease_taken_before_the_cleanup_keeps_the_server_running(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, _ = sandbox
    env = job_env(running, "kept")
    a, b = Job(env, "org/repo/1/a/1"), Job(env, "org/repo/2/b/1")
    a.up()
    b.up()
    kept = a.down(delete=True)
    assert kept.kept
    assert kept.holders == [b.holder]
    # It names each holder, its lease's age and end, and how to stop it anyway.
    b_lease = b.result.lease.id if b.result and b.result.lease else "?"
    assert f"kept running: 1 live lease(s): org/repo/2/b/1 (lease {b_lease}, held " in kept.message
    assert (
        ", ends in 3.0 h); to stop it anyway: 'ondemand down --force', or release one with "
        "'ondemand down --lease ID' (not deleted either)" in kept.message
    )
    assert b.chat()
    # A's per-run key ended with its lease; B's works until B's own cleanup.
    assert not a.chat()
    # A retried cleanup (or one after the lease's TTL) is told its lease is gone.
    again = a.down()
    assert again.kept
    lease = a.result.lease.id if a.result and a.result.lease else "?"
    assert f"kept running: lease {lease} was not live (it expired, or was released" in again.message
    stopped = b.down()
    assert (stopped.kept, stopped.was_running) == (False, True)
    assert not b.chat()


def test_the_last_down_waits_for_a_stream_in_flight_then_stops(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # 100 tokens at 40/s: a 2.5 s answer, still streaming when the cleanup runs.
    slow = {**FAST_APPS, "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40",
            "OLLAMA_EMULATOR_RESPONSE_TOKENS": "100"}  # fmt: skip
    running, _ = start_sandbox(tmp_path / "slow", app_env=slow)
    job = Job(job_env(running, "streaming"), "org/repo/1/a/1")
    other = Job(job_env(running, "streaming"), "org/repo/2/b/1")
    result = job.up()
    lines: list[bytes] = []
    with httpx.stream(
        "POST", result.url + "/api/chat", headers={"X-API-Key": result.api_key or ""},
        json={**CHAT, "stream": True}, timeout=10,
    ) as stream:  # fmt: skip
        chunks = stream.iter_lines()
        lines.append(next(chunks).encode())
        cleanup = threading.Thread(target=job.down)
        cleanup.start()
        # While it drains, a new job is refused a lease: it waits for the stop, then starts
        # the server again.
        arrival = threading.Thread(target=other.up)
        arrival.start()
        lines.extend(line.encode() for line in chunks)
        cleanup.join(30)
    # The stream ran to its end, and then the server stopped.
    assert json.loads(lines[-1])["done"] is True
    assert job.down_result is not None
    assert (job.down_result.kept, job.down_result.was_running) == (False, True)
    assert "; 1 request(s) in flight ended first" in job.down_result.message
    arrival.join(60)
    assert other.result is not None
    assert other.result.lease is not None
    assert other.chat()
    assert other.down().was_running


def test_a_stream_longer_than_the_drain_timeout_does_not_keep_the_gpu(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # 1000 tokens at 40/s: a 25 s answer, against a drain timeout of 1 s.
    slow = {**FAST_APPS, "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40",
            "OLLAMA_EMULATOR_RESPONSE_TOKENS": "1000"}  # fmt: skip
    running, _ = start_sandbox(tmp_path / "long", app_env=slow)
    job = Job(job_env(running, "long", ONDEMAND_DRAIN_TIMEOUT="1s"), "org/repo/1/a/1")
    result = job.up(lease=False)  # a client without a lease: no reason to keep a GPU
    with httpx.stream(
        "POST", result.url + "/api/chat", headers={"X-API-Key": result.api_key or ""},
        json={**CHAT, "stream": True}, timeout=10,
    ) as stream:  # fmt: skip
        lines = stream.iter_lines()  # kept: a dropped iterator would close the stream
        assert next(lines)
        stopped = job.down()
    assert (stopped.kept, stopped.was_running) == (False, True)
    assert "stopped with 1 request(s) still in flight after 1s" in stopped.message
    with lifecycle_of(job.env) as (_, provider):
        assert not provider.status("long").status.billable


def test_two_ups_on_a_stopped_deployment_start_it_once_and_both_get_it(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, api = sandbox
    env = job_env(running, "twins")
    first = Job(env, "org/repo/1/a/1")
    first.up()
    first.down()
    before = _history(api, "twins")
    jobs = [Job(env, f"org/repo/2/job{n}/1") for n in range(2)]
    assert run_threads(*(job.up for job in jobs)) == []
    after = _history(api, "twins")[len(before) :]
    assert after.count("QUEUED") == 1, after
    urls = {job.result.url for job in jobs if job.result}
    assert len(urls) == 1
    assert all(job.chat() for job in jobs)
    downs = [job.down() for job in jobs]
    assert [d.kept for d in downs] == [True, False]


def test_jobs_and_a_watchdog_racing_in_random_order_never_kill_a_lease_holder(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    """Three jobs per round start, test and clean up at random offsets while a watchdog
    looks every 0.2 s with an idle threshold just above 'up''s slowest poll (1 s), as 30
    minutes is far above it in real use. Whatever the interleaving, every chat of a job
    between its up and its down succeeds, and at the end nothing bills."""
    running, api = sandbox
    env = job_env(running, "racing")
    watching = threading.Event()
    verdicts: list[str] = []

    def watchdog() -> None:
        with lifecycle_of(env) as (resolved, provider):
            while not watching.is_set():
                verdict = watch_once(
                    resolved, provider, idle_seconds=1.5, max_lifetime_seconds=3600
                )
                verdicts.append(verdict.action)
                time.sleep(0.2)

    watcher = threading.Thread(target=watchdog)
    watcher.start()
    failures: list[str] = []
    try:
        for round_ in range(ROUNDS):
            rng = random.Random(round_)
            jobs = [Job(env, f"org/repo/{round_}/job{n}/1") for n in range(3)]

            def lifecycle(job: Job, rng: random.Random) -> None:
                time.sleep(rng.uniform(0, 0.8))
                job.up()
                for _ in range(rng.randint(1, 4)):
                    job.chat()
                    time.sleep(rng.uniform(0, 0.3))
                job.down()

            runs = [partial(lifecycle, job, random.Random(rng.random())) for job in jobs]
            errors = run_threads(*runs)
            failures += [repr(e) for e in errors] + [f for job in jobs for f in job.failures]
    finally:
        watching.set()
        watcher.join(30)
    assert failures == []
    with lifecycle_of(env) as (_, provider):
        final = provider.status("racing")
        if final.status.billable:  # the last cleanup may race the watchdog: give it a moment
            time.sleep(1)
            final = provider.status("racing")
    assert not final.status.billable, final
    assert "QUEUED" in _history(api, "racing")


def test_down_and_the_watchdog_at_once_stop_it_once_without_an_error(
    sandbox: tuple[SandboxServer, Ovh],
) -> None:
    running, api = sandbox
    env = job_env(running, "both")
    job = Job(env, "org/repo/1/a/1")
    job.up()

    def watchdog() -> None:
        with lifecycle_of(env) as (resolved, provider):
            watch_once(resolved, provider, idle_seconds=0, max_lifetime_seconds=3600)

    assert run_threads(job.down, watchdog) == []
    with lifecycle_of(env) as (_, provider):
        assert not provider.status("both").status.billable
    assert job.down_result is not None
    again = Job(env, "org/repo/1/a/2").down()
    assert "already stopped" in again.message
    assert _history(api, "both").count("STOPPING") == 1
