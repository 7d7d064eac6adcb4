"""RunPod's per-key rate limit (its example policy: 60 requests a minute): how many REST
calls one lifecycle makes, and five jobs running it at once on one key, against the
sandbox's emulated REST v2 over loopback with the limit enforced."""

from __future__ import annotations

import threading

import pytest

from ondemand.lifecycle import deploy, down, status, up
from ondemand.sandbox.runpod.ratelimit import RateLimiter
from tests.clirun import run
from tests.jobs import lifecycle_of, run_threads
from tests.providers.test_runpod import Cloud, cloud  # noqa: F401 (the fixture)

# deploy 3, up 8, status 2, down 2, down --force 4 when measured (it was 6, 14, 3, 4, 6
# with every look a listing and a fresh read per poll); up's share depends on how long
# the workers take, so a margin.
LIFECYCLE_BUDGET = 24


def test_one_lifecycle_makes_few_calls_and_lists_endpoints_once_per_command(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    limiter = cloud.running.sandbox.runpod.rest.limiter
    key = cloud.running.env["RUNPOD_API_KEY"]
    used = {}
    for step in (["deploy"], ["up"], ["status"], ["down"], ["down", "--force"]):
        before = limiter.calls.get(key, 0)
        code, _, err = run(step, capsys)
        assert code == 0, err
        used[" ".join(step)] = limiter.calls[key] - before
    assert sum(used.values()) <= LIFECYCLE_BUDGET, used
    assert used["status"] <= 2, used  # the endpoint and its workers, nothing more


def test_the_emulator_answers_429_as_runpod_documents_it(cloud: Cloud) -> None:  # noqa: F811
    now = [0.0]
    cloud.running.sandbox.runpod.rest.limiter = RateLimiter(2, clock=lambda: now[0])
    with cloud.http as client:
        assert client.get("/v2/serverless").status_code == 200
        assert client.get("/v2/serverless").status_code == 200
        now[0] = 48.2
        refused = client.get("/v2/serverless")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "12"
        assert refused.headers["ratelimit"] == '"minute";r=0;t=12'
        assert refused.headers["ratelimit-policy"] == '"minute";q=2;w=60'
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json() == {
            "title": "Too Many Requests",
            "status": 429,
            "detail": "rate limit exceeded for the minute window",
        }
        now[0] = 60.0  # the next window
        assert client.get("/v2/serverless").status_code == 200


def test_five_jobs_at_once_on_one_key_stay_under_the_limit_and_see_no_429(
    cloud: Cloud,  # noqa: F811
) -> None:
    # RunPod's quota of 60, over a window six times shorter than its minute: the sandbox's
    # workers start in about a second instead of minutes, so the jobs' calls come closer
    # together than in production too.
    limiter = RateLimiter(60, window=10.0)
    cloud.running.sandbox.runpod.rest.limiter = limiter
    key = cloud.running.env["RUNPOD_API_KEY"]
    lock = threading.Lock()
    results: list[str] = []

    def job(number: int) -> None:
        env = cloud.env(ONDEMAND_TIMEOUT="90s")
        holder = f"job-{number}"
        with lifecycle_of(env) as (resolved, provider):
            deploy(resolved, provider)
        with lifecycle_of(env) as (resolved, provider):
            started = up(resolved, provider, holder=holder)
        with lifecycle_of(env) as (resolved, provider):
            assert status(resolved, provider)["status"] == "running"
        with lifecycle_of(env) as (resolved, provider):
            assert started.lease is not None
            down(resolved, provider, lease_ids=[started.lease.id], holder=holder)
        with lock:
            results.append(holder)

    failures = run_threads(*(lambda n=n: job(n) for n in range(5)))
    assert failures == [], failures
    assert len(results) == 5
    calls = limiter.calls[key]
    refused = limiter.refused.get(key, 0)
    print(f"5 lifecycles at once: {calls} calls, {refused} answered 429 and retried")
    assert calls - refused <= 5 * LIFECYCLE_BUDGET


def test_a_429_from_the_key_limit_is_waited_out_and_never_reaches_the_user(
    cloud: Cloud,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One call a one-second window, and the window moves on only once a call was refused:
    # status's second call is refused whatever the machine's speed, and admitted after
    # the Retry-After it was given.
    limiter = RateLimiter(1, window=1.0)
    limiter.clock = lambda: float(sum(limiter.refused.values()))
    code, _, err = run(["deploy"], capsys)
    assert code == 0, err
    cloud.running.sandbox.runpod.rest.limiter = limiter
    code, out, err = run(["status"], capsys)
    assert code == 0, err
    assert "stopped" in out
    assert sum(limiter.refused.values()) == 1
    assert "rate limit" not in out + err
