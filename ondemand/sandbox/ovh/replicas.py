"""An app's replicas in one sandbox run: each a real ``ondemand serve``, probed on its own.

A one-replica app's server listens on the app's port, as apps always have here. With more,
each replica listens on a port of its own behind a ``Balancer`` on the app's port. Every
replica gets the app's environment (as it was when the app started: updates apply at the
next start) plus a ``HOSTNAME`` of its own, as Kubernetes gives each pod, and a log of its
own: ``serve.log`` for replica 0, ``serve.<index>.log`` for the others. They share the
app's model store, whose writes are atomic, so replicas pulling at once is safe.

Readiness is counted as Kubernetes counts an HTTP probe: a 2xx or 3xx answer passes (so
``/ping``'s 204 while warming passes); a ready replica is unready after three failures in a
row, and ready again after one success. A replica that fails its probe is not restarted.
OVH's CLI guide says only "200 signifies a healthy state"; whether its platform counts a 204
is not published (docs/ovh.md, "Health check").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ondemand.sandbox.apps import AppProcess, AppRunner, cancel_once, finish
from ondemand.sandbox.ovh.balancer import Balancer
from ondemand.sandbox.ovh.model import AppRecord

FAILURE_THRESHOLD = 3
NOT_PROBED = "no answer yet"
# A replica that never passed is probed this often, so it joins as soon as it can serve.
_FAST_PROBE = 0.05
_UNSAFE = re.compile(r"[^a-z0-9-]+")


def log_name(index: int) -> str:
    return "serve.log" if index == 0 else f"serve.{index}.log"


def log_index(name: str) -> int | None:
    """The replica whose log ``name`` is, if it is one."""
    if name == "serve.log":
        return 0
    found = re.fullmatch(r"serve\.([1-9][0-9]*)\.log", name)
    return int(found[1]) if found else None


@dataclass
class Replica:
    index: int
    key: str
    """The runner's key: the app id for replica 0, ``<app id>/<index>`` for the others."""
    hostname: str
    log: Path
    port: int = 0
    process: AppProcess | None = None
    ready: bool = False
    ever_ready: bool = False
    """Whether its probe passed since its process started. One that exits before is not
    restarted: a server that cannot start has a configuration problem a restart repeats."""
    failures: int = 0
    last: str = NOT_PROBED
    next_probe: float = 0.0
    probing: asyncio.Task[None] | None = None
    restarts: int = 0
    stopping: bool = False

    def alive(self) -> bool:
        return self.process is not None and not self.stopping and self.process.exit_status() is None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.process.pid if self.process else None,
            "port": self.port or None,
            "url": f"http://127.0.0.1:{self.port}" if self.port else None,
            "ready": self.ready,
            "hostname": self.hostname,
            "log": str(self.log),
            "restarts": self.restarts,
        }


class ReplicaSet:
    """The replicas of one app while it is up, and its balancer when it has one."""

    def __init__(
        self,
        runner: AppRunner,
        record: AppRecord,
        *,
        app_dir: Path,
        models_dir: Path,
        grace: float | None,
    ) -> None:
        self.runner = runner
        self.record = record
        self.app_dir = app_dir
        self.models_dir = models_dir
        self.grace = grace
        self.env = {e["name"]: e["value"] for e in record.spec.get("envVars", [])}
        self.image = str(record.spec.get("image", ""))
        self.probe_path = (record.spec.get("probe") or {}).get("path") or "/ping"
        self.replicas: dict[int, Replica] = {}
        self.balancer: Balancer | None = None
        self._client: httpx.AsyncClient | None = None
        self._loop = asyncio.get_running_loop()
        self._probes: set[asyncio.Task[None]] = set()
        """Every probe task not ended yet, also those cancelled (a replica restarted or
        removed): the client closes only once none of them can use it any more."""
        self.closing: asyncio.Task[None] | None = None
        """The close, once begun (see ``close``)."""
        self.closed = False
        """Set when the close begins (or ``abandon``): no probe starts any more."""
        self._released = False

    # -- what the machine, the API and the control routes read ---------------------------

    def members(self) -> list[Replica]:
        return [self.replicas[index] for index in sorted(self.replicas)]

    def ready(self) -> list[Replica]:
        return [replica for replica in self.members() if replica.ready and replica.alive()]

    def targets(self) -> list[tuple[int, int]]:
        return [(replica.index, replica.port) for replica in self.ready()]

    def last_probe(self) -> str:
        """What the probe last saw on the first replica that is not ready."""
        for replica in self.members():
            if not replica.ready and replica.last != NOT_PROBED:
                return replica.last
        return self.members()[0].last if self.replicas else NOT_PROBED

    def probe_url(self, replica: Replica) -> str:
        return f"http://127.0.0.1:{replica.port}{self.probe_path}"

    # -- processes ------------------------------------------------------------------------

    def hostname(self, index: int) -> str:
        name = _UNSAFE.sub("-", self.record.name.lower()).strip("-") or "app"
        return f"{name[:40]}-{self.record.id[:8]}-{index}"

    def launch(self, index: int, port: int, note: str) -> Replica:
        replica = self.replicas.get(index)
        if replica is None:
            key = self.record.id if index == 0 else f"{self.record.id}/{index}"
            replica = Replica(index, key, self.hostname(index), self.app_dir / log_name(index))
            self.replicas[index] = replica
        _cancel(replica)
        # The app's own HOSTNAME wins, as a container's env does over the pod's.
        env = {"HOSTNAME": replica.hostname, **self.env}
        replica.process = self.runner.launch(
            replica.key,
            port=port,
            app_env=env,
            models_dir=self.models_dir,
            log=replica.log,
            note=note,
        )
        replica.port = port
        replica.ready = replica.ever_ready = replica.stopping = False
        replica.failures = 0
        replica.last = NOT_PROBED
        replica.next_probe = 0.0
        self.record.replicas[index] = (replica.process.pid, port)
        return replica

    def note(self, replica: Replica, text: str) -> None:
        """A line of the sandbox's in the replica's log, ending its current run."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        replica.log.parent.mkdir(parents=True, exist_ok=True)
        with replica.log.open("a", encoding="utf-8") as out:
            out.write(f"--- sandbox: {stamp} {text}\n")

    async def reap(self, replica: Replica) -> None:
        """Forget the process of a replica that exited; it stays in the set, down."""
        _cancel(replica)
        replica.ready = False
        await self.runner.stop(replica.key, grace=0)
        replica.process = None
        self.record.replicas.pop(replica.index, None)

    def kill(self, replica: Replica) -> None:
        """SIGKILL it now: a container killed, whose restart starts from nothing."""
        _cancel(replica)
        replica.ready = False
        self.runner.kill(replica.key)
        replica.process = None
        self.record.replicas.pop(replica.index, None)

    async def remove(self, replica: Replica, grace: float | None) -> None:
        """Take it out of the rotation, then stop it (SIGTERM, SIGKILL after ``grace``)."""
        replica.stopping = True
        replica.ready = False
        _cancel(replica)
        await self.runner.stop(replica.key, grace)
        replica.process = None
        if self.replicas.get(replica.index) is replica:
            del self.replicas[replica.index]
        self.record.replicas.pop(replica.index, None)

    def open_balancer(self) -> Balancer:
        """Listen on the app's port; ``UsageError`` when it is taken."""
        balancer = Balancer(self.targets, grace=self.grace if self.grace is not None else 10.0)
        balancer.listen(self.record.port)
        self.balancer = balancer
        return balancer

    async def close(self, grace: float | None) -> None:
        """Stop every replica and the balancer, together, as a deployment is deleted.

        The close runs in a task of its own (``closing``), which the caller's cancellation
        does not stop: a stop replaced by a forced delete must not leave the group half
        closed, its replicas running and its sockets open with nothing left to close them.
        A later call waits for the same close. Cancelling ``closing`` itself (the sandbox
        shutting down) cuts the grace short, yet the probes' client and the balancer are
        closed all the same; the processes left are then the runner's to stop."""
        if self.closing is None:
            self.closing = self._loop.create_task(
                self._close(grace), name=f"ovh-close-{self.record.id}"
            )
        await asyncio.shield(self.closing)

    async def _close(self, grace: float | None) -> None:
        self.closed = True
        members = self.members()
        for replica in members:
            replica.stopping = True
            replica.ready = False
        balancer, self.balancer = self.balancer, None
        try:
            await finish(self._probes)
            await asyncio.gather(
                *(self.runner.stop(replica.key, grace) for replica in members),
                *([balancer.close()] if balancer is not None else []),
            )
        finally:
            await self._release(balancer)
        for replica in members:
            replica.process = None
        self.replicas.clear()
        self.record.replicas.clear()

    async def _release(self, balancer: Balancer | None) -> None:
        # Runs when cut short too (in a ``finally``), so without the grace: ``abort`` ends a
        # balancer whose close was cancelled midway or never began, and does nothing more
        # after a close that ended.
        if balancer is not None:
            await balancer.abort()
        while self._probes:
            await finish(self._probes)
        self._released = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def abandon(self) -> concurrent.futures.Future[None] | None:
        """The blocking part of ``close``, from any thread, for when the event loop is gone
        or cannot be waited for: the runner kills the processes itself. With the loop still
        running, the probes' client and the balancer are closed on it (only the loop can
        close what it opened), a close under way cut short first: the future of that, for
        a caller on another thread to wait for."""
        if self._loop.is_running() and not self._loop.is_closed():
            aborting = self._abort()
            try:
                future = asyncio.run_coroutine_threadsafe(aborting, self._loop)
            except RuntimeError:  # the loop closed meanwhile
                aborting.close()
            else:
                return None if _running_loop() is self._loop else future
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            cancel_once(self._probes)
            if self.closing is not None:
                cancel_once([self.closing])
        if self.balancer is not None:
            self.balancer.kill()
            self.balancer = None
        return None

    async def _abort(self) -> None:
        self.closed = True
        if self.closing is not None:
            await finish([self.closing])
        # Whatever a close cut short left, or everything when none had begun.
        balancer, self.balancer = self.balancer, None
        if balancer is not None:
            await balancer.abort()
        await self._release(None)

    # -- readiness ------------------------------------------------------------------------

    def probe_due(self, period: float) -> None:
        """Start the probes that are due, each in a task of its own: a replica that hangs
        must not delay the verdict on the others."""
        if self.closed:
            return  # its client is closed, or about to be
        now = time.monotonic()
        for replica in self.members():
            if replica.probing is None and replica.alive() and now >= replica.next_probe:
                task = self._loop.create_task(
                    self._probe(replica, period), name=f"ovh-probe-{replica.key}"
                )
                replica.probing = task
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def _probe(self, replica: Replica, period: float) -> None:
        process = replica.process
        try:
            ok, last = await probe(self.client, self.probe_url(replica))
        finally:
            if replica.probing is asyncio.current_task():
                replica.probing = None
        if replica.process is not process or replica.stopping:
            return  # restarted or stopped meanwhile: this verdict was on the old process
        replica.last = last
        if ok:
            replica.failures = 0
            replica.ready = replica.ever_ready = True
        else:
            replica.failures += 1
            if replica.failures >= FAILURE_THRESHOLD:
                replica.ready = False
        replica.next_probe = time.monotonic() + (period if replica.ever_ready else _FAST_PROBE)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            if self._released:
                # One made now would never be closed: no probe runs after the close.
                raise RuntimeError("the replica set is closed")
            self._client = httpx.AsyncClient(timeout=2.0, trust_env=False)
        return self._client


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, if any: it cannot be waited for from here."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _cancel(replica: Replica) -> None:
    if replica.probing is not None:
        replica.probing.cancel()
        replica.probing = None


async def probe(client: httpx.AsyncClient, url: str) -> tuple[bool, str]:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}"
    return 200 <= response.status_code < 400, f"answered {response.status_code}"
