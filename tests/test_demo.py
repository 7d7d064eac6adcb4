"""`make demo` is one of the README's two set-up commands: it must keep working."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_the_local_lifecycle_and_leaves_nothing_running() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondemand.demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[1/5] ondemand up" in out
    assert "done_reason=stop" in out
    assert "anonymous GET /api/tags      -> 401" in out
    assert "user key POST /api/pull      -> 403" in out
    assert "admin key POST /api/pull     -> 200" in out
    assert "ondemand-demo (local): running, ready" in out
    assert "qwen3:0.6b: warm" in out
    assert "stopped ondemand-demo" in out
    assert "/ping no longer answers: nothing is left running" in out
    # up's progress reached the terminal while it waited.
    assert "qwen3:0.6b: pulling" in result.stderr
    # Keys are shown shortened, never whole.
    assert all(len(word) < 16 for word in out.split() if word.startswith("odk_"))
