"""Keep one ``ollama serve`` running on loopback: start it, notice when it dies, restart it.

Ollama listens only on 127.0.0.1: the proxy in front of it is the way in. Its environment
is only what Ollama reads (ondemand/childenv.py), never one of our keys: Ollama needs none,
and a crash dump or a debug log of its environment must not carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping

import httpx

from ondemand.childenv import ollama_environment
from ondemand.processes import dies_with_parent, port_free

log = logging.getLogger("ondemand.serve")
ollama_log = logging.getLogger("ondemand.serve.ollama")


def child_environment(
    env: Mapping[str, str], port: int, keep_alive: str | int | None = None
) -> dict[str, str]:
    out = ollama_environment(env)
    out["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    if keep_alive is not None:
        # /v1 requests cannot carry keep_alive: Ollama then uses its own default, so the
        # proxy's policy becomes that default (whole seconds or a duration, as Ollama reads).
        out["OLLAMA_KEEP_ALIVE"] = str(keep_alive)
    return out


class Supervisor:
    """Runs Ollama until ``stop()``; calls ``on_up`` each time it answers, ``on_down`` when
    it dies. Restarts back off from 1 s to 30 s, and reset after a minute of good health."""

    START_TIMEOUT = 120.0
    MAX_BACKOFF = 30.0
    STABLE_AFTER = 60.0

    def __init__(
        self,
        binary: str,
        port: int,
        env: Mapping[str, str],
        *,
        on_up: Callable[[], Awaitable[None]],
        on_down: Callable[[str], None],
        keep_alive: str | int | None = None,
    ) -> None:
        self.binary = binary
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = child_environment(env, port, keep_alive)
        self.on_up = on_up
        self.on_down = on_down
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.state = "starting"
        self._stop_requested = asyncio.Event()
        self._pipe_task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, object]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "pid": self.process.pid if self.process else None,
        }

    async def run(self) -> None:
        backoff = 1.0
        while not self._stop_requested.is_set():
            started = time.monotonic()
            reason = await self._run_once()
            if self._stop_requested.is_set():
                return
            self.state = "down"
            self.on_down(reason)
            if time.monotonic() - started > self.STABLE_AFTER:
                backoff = 1.0
            self.restarts += 1
            log.error("Ollama %s; restarting in %.0fs (restart %d)", reason, backoff, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.MAX_BACKOFF)

    async def _run_once(self) -> str:
        """Start Ollama, report it up once it answers, return why it stopped."""
        self.state = "starting"
        if not port_free(self.port):
            # Another process (a user's own Ollama?) would answer our readiness check.
            return f"cannot start: 127.0.0.1:{self.port} is already in use by another process"
        self.process = await asyncio.create_subprocess_exec(
            *dies_with_parent([self.binary, "serve"]),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        log.info("started %s serve (pid %d) on %s", self.binary, self.process.pid, self.url)
        self._pipe_task = asyncio.ensure_future(self._pipe_output(self.process))
        exited = asyncio.ensure_future(self.process.wait())
        try:
            if not await self._wait_answering(exited):
                if exited.done():
                    return f"exited with status {exited.result()} before it answered"
                await self._terminate()
                return f"did not answer within {self.START_TIMEOUT:.0f}s"
            self.state = "up"
            log.info("Ollama answers on %s", self.url)
            await self.on_up()
            code = await exited
            return f"exited with status {code}"
        finally:
            if not exited.done():
                exited.cancel()
            if self._pipe_task is not None:
                # Let the last lines (often the reason it died) reach the log first.
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self._pipe_task, 2)

    async def _wait_answering(self, exited: asyncio.Future[int]) -> bool:
        deadline = time.monotonic() + self.START_TIMEOUT
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline and not exited.done():
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/")).status_code == 200:
                        return not exited.done()
                await asyncio.sleep(0.05)
        return False

    async def _pipe_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            ollama_log.info("%s", line.decode(errors="replace").rstrip())

    async def _terminate(self, grace: float = 10.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            log.warning("Ollama did not stop within %.0fs; killing it", grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop Ollama (it unloads its models on SIGTERM) and do not restart it."""
        self._stop_requested.set()
        self.state = "stopped"
        await self._terminate(grace)


def resolve_binary(env: Mapping[str, str]) -> str | None:
    """``OLLAMA_BIN``, else ``ollama`` on PATH; None when neither exists."""
    import shutil

    configured = env.get("OLLAMA_BIN", "").strip()
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("ollama", path=env.get("PATH"))
