"""The app runner: an emulated cloud's app is a real ``python -m ondemand serve`` process.

Whatever image an app names, the sandbox runs this package's server (the image's
entrypoint), with the app's environment plus what makes it work on loopback:

- ``OLLAMA_BIN``: the Ollama emulator stand-in (no GPU, no real model);
- ``OLLAMA_MODELS``: a model store in the sandbox's state directory, kept across restarts
  of the app like a volume, so pulls are cached;
- ``HOST=127.0.0.1`` and ``PORT``: the app's port, fixed for its life so its URL is stable;
- ``ONDEMAND_OLLAMA_HOST``: a free port for the emulated Ollama.

Processes are children of the sandbox, each in a session of its own (so its Ollama can be
killed with it), and die with the sandbox: stopped on close, and on Linux signalled by the
kernel if the sandbox itself is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ondemand.processes import dies_with_parent, free_port

# Variables a container would get from its image rather than from the app's spec; the
# sandbox's own environment (its tokens, a user's keys) must not reach an app.
_PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
)
# Set by the sandbox, whatever the app's spec says: the spec was written for a container
# (e.g. OLLAMA_MODELS on a volume path, PORT 8080) and would not work on a shared loopback.
_OVERRIDDEN = ("OLLAMA_BIN", "OLLAMA_MODELS", "HOST", "PORT", "PORT_HEALTH", "ONDEMAND_OLLAMA_HOST")
BANNER = "=== sandbox:"


@dataclass
class AppProcess:
    key: str
    popen: subprocess.Popen[bytes]
    port: int
    ollama_port: int
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_status(self) -> int | None:
        """The exit status once it exited, else None. The process is not reaped, so its
        pid, which is also its process group id, cannot be reused before ``finish``."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        if not hasattr(os, "waitid"):  # pragma: no cover - not on Linux
            return self.popen.poll()
        try:
            result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.poll()
        if result is None or result.si_pid == 0:
            return None
        return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status

    def finish(self) -> int:
        """Kill whatever is left of its process group (its Ollama), then reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.wait()


def log_tail(path: Path, lines: int = 12, chars: int = 1500) -> str:
    """The end of the latest run's output in ``path`` (older runs are before its banner)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    last = text.rfind(BANNER)
    if last >= 0:
        text = text[last:].split("\n", 1)[1] if "\n" in text[last:] else ""
    kept = "\n".join(text.rstrip().splitlines()[-lines:])
    return kept[-chars:]


class AppRunner:
    """Starts and stops app processes, keyed by the emulator's app id."""

    def __init__(
        self,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 30.0,
    ) -> None:
        self.state_dir = state_dir
        self.extra_env = dict(env or {})
        """Added to every app's environment before its own variables (e.g. the emulated
        Ollama's ``OLLAMA_EMULATOR_*`` speed and models)."""
        self.stop_grace = stop_grace
        self.processes: dict[str, AppProcess] = {}
        self._standin: Path | None = None

    def standin(self) -> Path:
        if self._standin is None:
            from ondemand.sandbox.ollama import write_standin

            self._standin = write_standin(self.state_dir / "bin")
        return self._standin

    def environment(
        self, app_env: Mapping[str, str], *, port: int, ollama_port: int, models_dir: Path
    ) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.update(self.extra_env)
        env.update({k: v for k, v in app_env.items() if k not in _OVERRIDDEN})
        env.update(
            {
                "OLLAMA_BIN": str(self.standin()),
                "OLLAMA_MODELS": str(models_dir),
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{ollama_port}",
            }
        )
        return env

    def launch(
        self,
        key: str,
        *,
        port: int,
        app_env: Mapping[str, str],
        models_dir: Path,
        log: Path,
        note: str = "",
    ) -> AppProcess:
        """Start the app's server. Call from the thread that runs the event loop: on Linux
        the child is signalled when the thread that started it ends."""
        current = self.processes.get(key)
        if current is not None and current.exit_status() is None:
            raise RuntimeError(f"app {key} already has a running process (pid {current.pid})")
        if current is not None:
            current.finish()
        ollama_port = free_port()
        while ollama_port == port:
            ollama_port = free_port()
        env = self.environment(app_env, port=port, ollama_port=ollama_port, models_dir=models_dir)
        models_dir.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        python = sys.executable
        command = dies_with_parent([python, "-m", "ondemand", "serve"])
        with log.open("ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"{BANNER} {stamp} starting {key} on port {port} {note}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                command,
                env=env,
                cwd=log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = AppProcess(key, popen, port, ollama_port, log)
        self.processes[key] = process
        return process

    def get(self, key: str) -> AppProcess | None:
        return self.processes.get(key)

    async def stop(self, key: str, grace: float | None = None) -> int | None:
        """SIGTERM (the server drains and stops its Ollama), SIGKILL after ``grace``.
        Returns the exit status, None when nothing ran."""
        process = self.processes.get(key)
        if process is None:
            return None
        if process.exit_status() is None:
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + (self.stop_grace if grace is None else grace)
            # Polled: waiting on the exit would reap the process before its group is killed.
            while process.exit_status() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        code = process.finish()
        if self.processes.get(key) is process:
            del self.processes[key]
        return code

    def kill(self, key: str) -> int | None:
        """SIGKILL its process group now, as a container is killed rather than stopped;
        the exit status, None when nothing ran."""
        process = self.processes.pop(key, None)
        return process.finish() if process is not None else None

    async def stop_all(self, grace: float | None = None) -> None:
        await asyncio.gather(*(self.stop(key, grace) for key in list(self.processes)))

    def kill_all(self, grace: float | None = None) -> None:
        """The blocking twin of ``stop_all``, for when no event loop runs any more."""
        processes = list(self.processes.values())
        for process in processes:
            if process.exit_status() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (self.stop_grace if grace is None else grace)
        while time.monotonic() < deadline and any(p.exit_status() is None for p in processes):
            time.sleep(0.05)
        for process in processes:
            process.finish()
        self.processes.clear()


def reap_orphan(pid: int, port: int, grace: float = 5.0) -> bool:
    """Stop an app server left by a sandbox that died without stopping it (outside Linux,
    nothing signals it). Only a process group led by an ``ondemand serve`` on the app's port
    is touched, so a reused pid is left alone. True when something was stopped."""
    try:
        words = _command_line(pid)
        if os.getpgid(pid) != pid or "ondemand" not in words or "serve" not in words:
            return False
        environ = Path(f"/proc/{pid}/environ")
        if environ.exists() and f"PORT={port}".encode() not in environ.read_bytes().split(b"\0"):
            return False
        os.killpg(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError, subprocess.SubprocessError):
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies, which only wait for their parent
    to reap them, do not count."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _command_line(pid: int) -> list[str]:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.parent.is_dir():
        return proc.read_bytes().decode(errors="replace").split("\0")
    shown = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5,
        check=False,
    )  # fmt: skip
    return shown.stdout.split()


def cancel_once(tasks: Iterable[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Cancel each task that is not being cancelled already; all of them, to wait for.

    A second cancel would interrupt the first one's clean-up wherever it awaits: httpcore
    closes the connection of a cancelled request under an anyio shield, which a task's own
    ``cancel()`` goes through, so that connection would be left open."""
    running = list(tasks)
    for task in running:
        if not task.done() and not task.cancelling():
            task.cancel()
    return running


async def finish(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """``cancel_once`` and wait until every task has ended, whatever it raised. Unlike
    ``cancel_and_wait``, the caller's own cancellation is not swallowed."""
    running = cancel_once(tasks)
    if running:
        await asyncio.wait(running)
        for task in running:
            if not task.cancelled():
                task.exception()  # retrieved: the task was ended on purpose


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Cancel the emulator's background tasks and wait until each has ended, whatever it
    raised on the way out: shutting down must not stop at the first task that fails."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
