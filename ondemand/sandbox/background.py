"""``ondemand sandbox`` as a child process, for the demo and the benchmarks: they drive it
as a user would, from outside, through the variables it prints."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

# The sandbox prints its variables in a fixed order; this one comes last.
LAST_PRINTED = "RUNPOD_POD_PROXY_URL"


class SandboxExited(RuntimeError):
    """The sandbox process ended before it was ready, or failed when stopped."""


@contextlib.contextmanager
def background_sandbox(
    state: Path, env: Mapping[str, str], *options: str
) -> Iterator[dict[str, str]]:
    """Run ``ondemand sandbox --state-dir state *options`` until the block ends; yields the
    ``KEY=value`` lines it printed. Stopped with SIGTERM, which stops every app it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "sandbox", "--state-dir", str(state), *options],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed: dict[str, str] = {}
        while LAST_PRINTED not in printed:
            line = proc.stdout.readline()
            if not line:
                raise SandboxExited(f"'ondemand sandbox' exited with {proc.wait()}")
            name, _, value = line.strip().partition("=")
            printed[name] = value
        yield printed
    finally:
        proc.terminate()
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    if code != 0:
        raise SandboxExited(f"the sandbox exited with {code} when stopped")
