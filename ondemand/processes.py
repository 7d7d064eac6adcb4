"""Child processes that serve HTTP: start one, wait until it answers, always stop it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


class ProcessFailed(Exception):
    """The process exited, or did not answer in time; carries the tail of its stderr."""


# Runs before the real command: asks the kernel to SIGTERM it when its parent dies (even
# by SIGKILL), then becomes that command. The parent check closes the race where the
# parent died before the request was made. PR_SET_PDEATHSIG is 1; elsewhere than Linux
# the command just runs.
_DIES_WITH_PARENT = """
import os, signal, sys
if sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dies_with_parent(args: Sequence[str]) -> list[str]:
    """``args`` run so that the child is signalled when this process dies, however it dies:
    a killed server must not leave an Ollama holding a GPU and a port."""
    return [sys.executable, "-c", _DIES_WITH_PARENT, str(os.getpid()), *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for children that must bind it themselves)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now, as a server binding it would (SO_REUSEADDR, so a
    port left in TIME_WAIT by a process that just died counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running(
    args: Sequence[str],
    *,
    ready_url: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` (with ``env`` added to this process's environment) until the block ends.

    Waits until ``ready_url`` answers 200. stderr goes to a temporary file, not a pipe: an
    unread pipe fills up and blocks a child that logs a lot.
    """
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            list(args),
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + timeout
            while not _answers(ready_url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    stderr.seek(0)
                    tail = stderr.read().decode(errors="replace")[-2000:]
                    state = "exited" if proc.poll() is not None else "did not answer in time"
                    raise ProcessFailed(f"{' '.join(args[:4])} {state}:\n{tail}")
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
