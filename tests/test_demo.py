"""`make demo` is one of the README's two set-up commands: it must keep working."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_the_proxy_in_front_of_the_emulator_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondemand.demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "done_reason=stop" in out
    assert "anonymous GET /api/tags          -> 401" in out
    assert "user key POST /api/pull          -> 403" in out
    assert "admin key POST /api/pull         -> 200" in out
    # Keys are shown shortened, never whole.
    assert all(len(word) < 16 for word in out.split() if word.startswith("odk_"))
