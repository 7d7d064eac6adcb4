"""`make demo` is one of the README's two set-up commands: it must keep working."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_the_ovh_lifecycle_on_the_sandbox_and_leaves_nothing_running() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondemand.demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "deployed ondemand-demo (sandbox): created, then stopped" in out
    assert "[2/7] ondemand up" in out
    assert "done_reason=stop" in out
    assert "anonymous GET /api/tags      -> 401" in out
    assert "user key POST /api/pull      -> 403" in out
    assert "admin key POST /api/pull     -> 200" in out
    assert "ondemand-demo (sandbox): running, ready" in out
    assert "cost: billed" in out
    assert "qwen3:0.6b: warm" in out
    assert "stopped ondemand-demo" in out
    assert "/ping no longer answers: the app is stopped" in out
    assert "deployment deleted" in out
    assert "status: absent" in out
    # up's progress reached the terminal while it waited.
    assert "qwen3:0.6b: pulling" in result.stderr
    # The platform's states, each once, and the URL before the wait.
    assert result.stderr.count("sandbox: QUEUED") == 1
    assert result.stderr.index("url: http://") < result.stderr.index("/ping 200")
    # Keys are shown shortened, never whole.
    assert all(len(word) < 16 for word in out.split() if word.startswith("odk_"))


def test_demo_rehearses_a_runpod_endpoint_through_its_gateway() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondemand.demo", "--provider", "runpod"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Behind the gateway our key travels as X-API-Key, the RunPod key as Authorization.
    assert "X-API-Key odk_" in out
    assert "done_reason=stop" in out
    assert "user key POST /api/pull      -> 403" in out
    # A job's down leaves a serverless endpoint to scale to zero, and its worker stops.
    assert "ondemand-demo: left to scale to zero: each worker stops 2s after" in out
    assert "this run's share: billed" in out
    assert "workers: none: the worker stopped once idle" in out
    assert "status: absent" in out
