"""The main process's side of ``ONDEMAND_PROXY_WORKERS``: start, watch and stop workers.

Each worker (ondemand/proxy/worker.py) is a child process that inherits a listener of its
own on the proxy's address, and the kernel spreads new connections over the listeners
(``serving.listeners``): a burst of arrivals is parsed, checked and forwarded on several
cores at once. The main
process serves the port as well, keeps every count (ondemand/proxy/link.py) and answers
what workers relay to it on a Unix socket only it and its workers can reach.

A worker that dies is started again at once, and its requests' slots are given back when
its link closes. One that dies twice in a row within a minute of starting is not started
again: its listener is closed, so the kernel sends its share to the other processes.
Stopping the main process stops the workers first, each finishing its requests as the
main process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ondemand.errors import ConfigError
from ondemand.proxy.link import MainSide, residency_message

if TYPE_CHECKING:
    from ondemand.proxy.app import ProxyApp

log = logging.getLogger("ondemand.proxy.workers")
RESIDENCY_BEAT = 0.25
STEADY_SECONDS = 60.0  # a worker that ends sooner twice in a row is not started again


class Workers:
    """A proxy's worker processes, from the main process: one per listener given."""

    def __init__(
        self, listeners: list[socket.socket], env: Mapping[str, str], *, grace: float = 10.0
    ) -> None:
        self.listeners = listeners  # one per worker, on the main process's address
        self.extra = len(listeners)  # worker processes besides the main one
        self.env = dict(env)
        self.grace = grace
        self._dir = tempfile.mkdtemp(prefix="ondemand-proxy-")  # 0700: ours alone
        self.relay_path = str(Path(self._dir) / "main.sock")
        self.relay = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.relay.bind(self.relay_path)  # at most 107 bytes of path
        except OSError as exc:
            self.relay.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise ConfigError(
                f"cannot create the proxy workers' socket {self.relay_path}: {exc} (the "
                "temporary directory's path may be too long for a Unix socket)",
                hint="set TMPDIR to a short writable directory (/tmp), or ONDEMAND_PROXY_WORKERS=1",
            ) from exc
        self.relay.listen(512)
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.links: dict[int, MainSide] = {}
        self._served = [0] * self.extra  # by workers that have ended, per place
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._told: set[int] = set()  # workers sent SIGTERM

    def view(self, requests: int) -> dict[str, object]:
        """For /ondemand/status; ``requests``: how many the whole proxy forwarded."""
        theirs = [self._served[i] + (self.links[i].admitted if i in self.links else 0)
                  for i in range(self.extra)]  # fmt: skip
        return {
            "processes": 1 + self.extra,
            "running": 1 + len(self.processes),
            "requests": [requests - sum(theirs), *theirs],  # the main process's first
        }

    def tell_all(self, message: dict[str, object]) -> None:
        for link in self.links.values():
            link.write(message)

    async def start(self, app: ProxyApp) -> None:
        started = [asyncio.get_running_loop().create_future() for _ in range(self.extra)]
        for index in range(self.extra):
            self._tasks.append(asyncio.ensure_future(self._keep(index, app, started[index])))
        self._tasks.append(asyncio.ensure_future(self._share_residency(app)))
        await asyncio.gather(*started)

    async def _share_residency(self, app: ProxyApp) -> None:
        """Workers apply the same keep_alive rule to the preloaded models (under ``serve``):
        tell them when that set changes (a failed preload, models added), within a beat."""
        shared = app.residency()
        while True:
            await asyncio.sleep(RESIDENCY_BEAT)
            now = app.residency()
            if now != shared:
                shared = now
                self.tell_all({"residency": residency_message(now)})

    async def _keep(self, index: int, app: ProxyApp, started: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        quick_before = False
        while True:
            began = loop.time()
            try:
                status: int | str = await self._run(index, app, started)
            except OSError as exc:
                status = str(exc)
            if not started.done():
                started.set_result(None)
            if self._stopping:
                return
            quick = loop.time() - began < STEADY_SECONDS
            if quick and quick_before:
                # Its listener's share of new connections would wait for a worker that does
                # not come: closed, the kernel gives that share to the other processes.
                self.listeners[index].close()
                log.error("proxy worker %d keeps failing (last: %s); the other processes "
                          "serve its share", index + 1, status)  # fmt: skip
                return
            quick_before = quick
            # At once: connections the kernel gives its listener wait until it is back.
            log.warning("proxy worker %d ended (exit status %s); starting it again",
                        index + 1, status)  # fmt: skip

    async def _run(self, index: int, app: ProxyApp, started: asyncio.Future[None]) -> int | str:
        if self._stopping:  # not started again once the server stops
            return "not started: the server is stopping"
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        listen_fd, link_fd = self.listeners[index].fileno(), theirs.fileno()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ondemand.proxy.worker",
                "--listen-fd", str(listen_fd), "--link-fd", str(link_fd),
                "--grace", str(self.grace),
                pass_fds=(listen_fd, link_fd), env=self.env,
            )  # fmt: skip
        finally:
            theirs.close()
        _, link = await loop.connect_accepted_socket(lambda: MainSide(app), ours)
        secret = app.leases.run_keys.secret.hex()
        hello = {"run_key_secret": secret, "relay": self.relay_path,
                 "residency": residency_message(app.residency())}  # fmt: skip
        link.write({"hello": hello})
        self.processes[index], self.links[index] = process, link
        if not started.done():
            started.set_result(None)
        try:
            return await process.wait()
        finally:
            link.close()
            self._served[index] += link.admitted
            self.processes.pop(index, None)
            self.links.pop(index, None)

    def stop_soon(self) -> None:
        """The server is stopping: the workers stop taking connections and let their
        requests finish now, alongside the main process, not after it. Once only: a second
        SIGTERM would make a worker quit without waiting for its requests."""
        self._stopping = True
        for listener in self.listeners:
            # The workers hold listeners of their own; ours, kept to start a worker again,
            # would take new connections into a queue nobody reads.
            listener.close()
        for process in self.processes.values():
            if process.pid not in self._told:
                self._told.add(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    async def stop(self) -> None:
        """Stop every worker: SIGTERM, up to ``grace`` seconds to finish, then SIGKILL."""
        processes = list(self.processes.values())
        self.stop_soon()
        if processes:
            _, late = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in processes], timeout=self.grace + 2
            )
            for process in processes:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.relay.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def attach(
    app: ProxyApp, listeners: list[socket.socket], env: Mapping[str, str], *, grace: float = 10.0
) -> tuple[socket.socket, ...]:
    """Give ``app`` a worker for each of ``listeners`` (``serving.listeners``' all but the
    main process's own). Returns the sockets the main process serves besides its listener
    (the relay). ``grace``: how long a stopping worker lets its requests finish."""
    if not listeners:
        return ()
    env = {**env, "ONDEMAND_UPSTREAM": app.settings.upstream, "ONDEMAND_REPLICA_ID": app.replica}
    app.workers = Workers(listeners, env, grace=grace)
    return (app.workers.relay,)
