"""Jobs racing on an app of several replicas behind a load balancer with no stickiness:
every per-run key works on every replica, and no job's cleanup stops the app while
another job holds a lease, whichever replica its requests reach."""

from __future__ import annotations

import random
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import pytest

from ondemand.sandbox.server import SandboxServer
from tests.cloud import Ovh, StartSandbox
from tests.jobs import Job, job_env, lifecycle_of, run_threads

QUICK_CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
              "stream": False, "options": {"num_predict": 2}}  # fmt: skip


def _app(api: Ovh, name: str) -> dict[str, object]:
    [app] = [a for a in api.http.get("/v1/app").json()["items"] if a["spec"]["name"] == name]
    return dict(app)


def _history(api: Ovh, name: str) -> list[str]:
    status = _app(api, name)["status"]
    assert isinstance(status, dict)
    return [entry["state"] for entry in status["history"]]


class Chatter:
    """A job's test step: requests with its own key, one after another, until told to stop;
    every answer that is not 200 is a failure."""

    def __init__(self, job: Job) -> None:
        assert job.result is not None
        self.job = job
        self.url, self.key = job.result.url, job.result.api_key or ""
        self.done = threading.Event()
        self.answers = 0
        self.replicas: set[str] = set()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        # A new connection per request would hide nothing: the balancer turns per request.
        with httpx.Client(timeout=10, headers={"X-API-Key": self.key}) as client:
            while not self.done.is_set():
                try:
                    answers = [client.post(self.url + "/api/chat", json=QUICK_CHAT)]
                    # Two or three requests a turn, so that with two or three replicas in
                    # round robin both the chats and the status reads reach each of them.
                    for _ in range(1 + self.answers % 2):
                        answers.append(client.get(self.url + "/ondemand/status"))
                except httpx.HTTPError as exc:
                    self.job.failures.append(f"{self.job.holder}: {exc!r}")
                    continue
                for got in answers:
                    if got.status_code != 200:
                        self.job.failures.append(f"{self.job.holder}: {got.status_code}")
                    elif got.url.path == "/ondemand/status":
                        self.replicas.add(got.json()["replica"])
                self.answers += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


@pytest.mark.parametrize(
    ("replicas", "workers"),
    [(2, 1), (3, 1), (2, 2)],
    ids=["2 replicas", "3 replicas", "2 replicas of 2 processes"],
)
def test_three_jobs_on_replicas_never_see_a_failed_request_and_it_stops_once(
    start_sandbox: StartSandbox, tmp_path: Path, replicas: int, workers: int
) -> None:
    running, api = start_sandbox(tmp_path / f"fleet{replicas}")
    name = f"fleet{replicas}"
    env = job_env(running, name, ONDEMAND_OVH_REPLICAS=str(replicas),
                  ONDEMAND_PROXY_WORKERS=str(workers))  # fmt: skip
    jobs = [Job(env, f"org/repo/{n}/test/1") for n in range(3)]
    assert run_threads(*(job.up for job in jobs)) == []
    assert len({job.result.url for job in jobs if job.result}) == 1
    chatters = [Chatter(job) for job in jobs]
    for chatter in chatters:
        chatter.thread.start()
    # The replicas all serve before the first cleanup: every job's key meets each of them.
    deadline = time.monotonic() + 30
    while any(len(c.replicas) < replicas for c in chatters):
        assert time.monotonic() < deadline, [sorted(c.replicas) for c in chatters]
        time.sleep(0.05)
    # The jobs end one after another, each cleanup while the others still send requests;
    # each job stops sending just before its own cleanup, as a test step ends.
    rng = random.Random(replicas)
    for job, chatter in zip(jobs, chatters, strict=True):
        time.sleep(rng.uniform(0.2, 0.6))
        chatter.stop()
        result = job.down()
        last = job is jobs[-1]
        assert result.kept is not last, result.message
    assert [f for job in jobs for f in job.failures] == []
    assert all(c.answers > 3 for c in chatters)
    with lifecycle_of(env) as (_, provider):
        assert not provider.status(name).status.billable
    assert _history(api, name).count("STOPPING") == 1
    spec = _app(api, name)["spec"]
    assert isinstance(spec, dict)
    env_vars = {e["name"]: e["value"] for e in spec["envVars"]}
    assert env_vars.get("ONDEMAND_PROXY_WORKERS", "1") == str(workers)


def test_cleanups_racing_on_three_replicas_stop_the_app_once_and_cut_no_one_off(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    """Random offsets, three jobs, three replicas: whatever the interleaving of ups,
    requests and downs, a job holding a lease never sees a request fail, and the app ends
    stopped."""
    running, api = start_sandbox(tmp_path / "random")
    env = job_env(running, "random", ONDEMAND_OVH_REPLICAS="3")
    for round_ in range(2):
        rng = random.Random(round_)
        jobs = [Job(env, f"org/repo/{round_}/job{n}/1") for n in range(3)]

        def lifecycle(job: Job, rng: random.Random) -> None:
            time.sleep(rng.uniform(0, 0.8))
            job.up()
            chatter = Chatter(job)
            chatter.thread.start()
            time.sleep(rng.uniform(0.3, 1.5))
            chatter.stop()
            job.down()

        runs = [partial(lifecycle, job, random.Random(rng.random())) for job in jobs]
        assert run_threads(*runs) == []
        assert [f for job in jobs for f in job.failures] == []
        downs = [job.down_result.message if job.down_result else None for job in jobs]
        with lifecycle_of(env) as (_, provider):
            assert not provider.status("random").status.billable, downs
    assert "QUEUED" in _history(api, "random")


def test_a_replica_that_restarts_with_an_empty_memory_still_takes_every_key(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    running, api = start_sandbox(tmp_path / "restart")
    env = job_env(running, "restart", ONDEMAND_OVH_REPLICAS="2")
    a, b = Job(env, "org/repo/1/a/1"), Job(env, "org/repo/2/b/1")
    a.up()
    b.up()
    app_id = _app(api, "restart")["id"]
    restarted = httpx.post(
        f"{running.url}/_sandbox/ovh/apps/{app_id}/replicas/1/restart", timeout=30
    )
    assert restarted.status_code == 200, restarted.text
    _wait_ready(running, str(app_id), 2)
    # The platform sends traffic to a replica whose probe passes, and a warming one's
    # passes (204) while it answers requests 503 "still starting": wait for it to be warm.
    _wait_warm(running, str(app_id))
    # The new replica never saw either lease, yet takes both keys (they are signed) ...
    chatter = Chatter(a)
    chatter.thread.start()
    deadline = time.monotonic() + 20
    while len(chatter.replicas) < 2:
        assert time.monotonic() < deadline, (chatter.replicas, a.failures[:5])
        time.sleep(0.05)
    chatter.stop()
    assert a.failures == []
    # ... and A's cleanup finds B's lease on the replica that has it: the app keeps running.
    kept = a.down()
    assert kept.kept, kept.message
    assert kept.holders == [b.holder]
    assert b.chat()
    assert not b.down().kept


def _wait_warm(running: SandboxServer, app_id: str) -> None:
    """Until every replica's own /ping says 200: its models are loaded."""
    apps = httpx.get(running.url + "/_sandbox/apps", timeout=5).json()["apps"]
    [app] = [x for x in apps if x.get("id") == app_id]
    deadline = time.monotonic() + 30
    for replica in app["replicas"]:
        while httpx.get(replica["url"] + "/ping", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, replica
            time.sleep(0.05)


def _wait_ready(running: SandboxServer, app_id: str, replicas: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        apps = httpx.get(running.url + "/_sandbox/apps", timeout=5).json()["apps"]
        [app] = [x for x in apps if x.get("id") == app_id]
        if sum(1 for r in app["replicas"] if r["ready"]) >= replicas:
            return
        assert time.monotonic() < deadline, app
        time.sleep(0.05)
