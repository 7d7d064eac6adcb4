"""The state machine: one asyncio task drives each app through its transitions.

QUEUED and INITIALIZING last ``transition_seconds`` each; SCALING starts the app's replicas
(``spec.scalingStrategy``: ``fixed.replicas``, or ``automatic.replicasMin``, at least 1),
each a server of its own, and lasts until one of them passes its readiness probe
(``spec.probe.path``, else ``/ping``; 2xx or 3xx, as Kubernetes counts it: see
``replicas.py``); then RUNNING, with
``availableReplicas`` the replicas ready now. One replica listens on the app's port; several
sit behind a balancer there (``balancer.py``).

While up, each replica is probed every ``probe_period``. The probe is a readiness probe ("App
readiness probe" in the API's types; newer types add a separate ``livenessProbe``): a failing
replica is taken out of service, never restarted. With none ready (each failed three times in
a row) the app is SCALING until one answers again; an app not ready within
``deploymentStrategy.progressDeadlineSeconds`` (600 by default) is FAILED. A replica whose
server exits is started again (one that never became ready is left down), unless none is
left running: then the app is FAILED with the end of its log, as a one-replica app whose
server exits. A rescale passes through SCALING, starting or stopping replicas, until the new
ones are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ondemand.errors import UsageError
from ondemand.processes import free_port, port_free
from ondemand.sandbox.apps import AppRunner, log_tail
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.ovh.model import (
    DELETED,
    DELETING,
    ERROR,
    FAILED,
    INITIALIZING,
    QUEUED,
    RUNNING,
    SCALING,
    STOPPED,
    STOPPING,
    AppRecord,
)
from ondemand.sandbox.ovh.replicas import Replica, ReplicaSet

log = logging.getLogger("ondemand.sandbox")

NO_CAPACITY = (
    "Not enough resources: no {gpu} available in this region right now, or the "
    "project's quota is reached. Try again later or choose another flavor."
)
_POLL = 0.05


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Machine:
    """The transitions; ``OvhEngine`` adds the store and the API's operations."""

    def __init__(
        self, runner: AppRunner, faults: FaultSet, transition_seconds: float, probe_period: float
    ) -> None:
        self.runner = runner
        self.faults = faults
        self.transition_seconds = transition_seconds
        self.probe_period = probe_period
        self.apps: dict[str, AppRecord] = {}
        self.groups: dict[str, ReplicaSet] = {}
        """The replicas of each app that is up in this run."""
        self.closing: set[ReplicaSet] = set()
        """Groups taken out of ``groups`` whose close may still run: it goes on when the
        task that began it is cancelled, so the app's next transition and ``aclose`` wait
        for it (see ``ReplicaSet.close``)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rescale: set[str] = set()

    def save(self) -> None:
        raise NotImplementedError

    def app_dir(self, app_id: str) -> Path:
        raise NotImplementedError

    def models_dir(self, record: AppRecord) -> Path:
        raise NotImplementedError

    def pull_volumes(self, record: AppRecord) -> None:
        """INITIALIZING: the app's volumes start as copies of their buckets."""
        raise NotImplementedError

    def drop_volumes(self, record: AppRecord) -> None:
        """Stopped: the run's volumes are gone; only a data sync pushed them back."""
        raise NotImplementedError

    def _drive(
        self, record: AppRecord, step: Callable[[AppRecord], Coroutine[Any, Any, None]]
    ) -> None:
        """Replace the app's task: the previous one is cancelled and finishes first."""
        if self.loop is None:
            raise RuntimeError("the OVH emulator was used before begin()")
        if self.closed:
            return  # shutting down: the stored state is resumed by the next sandbox
        previous = self._tasks.pop(record.id, None)
        if previous is not None:
            previous.cancel()
        self._rescale.discard(record.id)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await previous
            try:
                await step(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must show as an app state, not vanish
                log.exception("app %s: transition failed", record.id)
                with contextlib.suppress(Exception):
                    await self._close_group(record, grace=0)
                self._set(record, FAILED, f"sandbox error: {exc}")

        task = self.loop.create_task(run(), name=f"ovh-app-{record.id}")
        self._tasks[record.id] = task
        task.add_done_callback(lambda t: self._forget(record.id, t))

    def _forget(self, app_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(app_id) is task:
            del self._tasks[app_id]

    def _set(self, record: AppRecord, state: str, message: str | None = None) -> None:
        code = "APP_FAILED" if state == FAILED else None
        record.transition(state, message, code)
        if state == RUNNING:
            record.available_replicas = self._ready_count(record)
        self.save()
        log.info("app %s (%s): %s", record.id, record.name, state)

    def _ready_count(self, record: AppRecord) -> int:
        group = self.groups.get(record.id)
        return len(group.ready()) if group is not None else 0

    async def _pause(self, state: str, base: float | None = None) -> None:
        seconds = self.faults.duration(state, self.transition_seconds if base is None else base)
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _deadline(self, record: AppRecord) -> float:
        strategy = record.spec.get("deploymentStrategy") or {}
        return float(strategy.get("progressDeadlineSeconds", 600))

    def _grace(self, record: AppRecord) -> float | None:
        strategy = record.spec.get("deploymentStrategy") or {}
        grace = strategy.get("terminationGracePeriodSeconds")
        return float(grace) if grace is not None else None

    def _free_port(self) -> int:
        """A port for a replica behind the balancer: none that an app has reserved."""
        taken = {record.port for record in self.apps.values()}
        port = free_port()
        while port in taken:
            port = free_port()
        return port

    # -- up ---------------------------------------------------------------------------

    async def _walk(self, record: AppRecord) -> None:
        await self._pause(QUEUED)
        if self.faults.take_no_capacity():
            gpu = record.spec["resources"].get("gpuModel") or record.spec["resources"]["flavor"]
            self._set(record, FAILED, NO_CAPACITY.format(gpu=gpu))
            return
        if self.faults.take_platform_error():
            self._set(record, ERROR)
            return
        self._set(record, INITIALIZING)
        await asyncio.gather(
            asyncio.to_thread(self.pull_volumes, record), self._pause(INITIALIZING)
        )
        self._set(record, SCALING)
        if self.closed:
            return
        taken = f"cannot start: the app's port 127.0.0.1:{record.port} is taken by another process"
        if not port_free(record.port):
            self._set(record, FAILED, taken)
            return
        await self._close_group(record, grace=0)
        group = ReplicaSet(
            self.runner,
            record,
            app_dir=self.app_dir(record.id),
            models_dir=self.models_dir(record),
            grace=self._grace(record),
        )
        self.groups[record.id] = group
        count = record.desired_replicas()
        if count == 1:
            group.launch(0, record.port, f"(image {group.image})")
        else:
            try:
                group.open_balancer()
            except UsageError:
                await self._close_group(record, grace=0)
                self._set(record, FAILED, taken)
                return
            for index in range(count):
                group.launch(index, self._free_port(), _note(group, index, count))
        self.save()
        if await self._until_ready(record, group):
            self._set(record, RUNNING)
            await self._watch(record, group)

    async def _until_ready(self, record: AppRecord, group: ReplicaSet) -> bool:
        limit = self._deadline(record)
        started = time.monotonic()
        at_least = self.faults.duration(SCALING, 0.0)
        while True:
            if not await self._supervise(record, group, "while starting"):
                return False
            group.probe_due(self.probe_period)
            elapsed = time.monotonic() - started
            if group.ready() and elapsed >= at_least:
                return True
            if elapsed > limit:
                last = group.last_probe()
                where = (
                    f"{record.url}{group.probe_path}"
                    if group.balancer is None
                    else f"{group.probe_path} of each replica"
                )
                await self._close_group(record, grace=5)
                self._set(
                    record,
                    FAILED,
                    f"the app did not become ready within {limit:.0f}s "
                    f"(readiness probe {where}: {last})",
                )
                return False
            await asyncio.sleep(_POLL)

    async def _watch(self, record: AppRecord, group: ReplicaSet) -> None:
        """While up: restart replicas that exit, probe readiness (none ready → SCALING,
        one ready again → RUNNING), and pass through SCALING on a rescale."""
        settling: float | None = None
        while True:
            if not await self._supervise(record, group, "while running"):
                return
            wanted = record.desired_replicas()
            if record.id in self._rescale or (
                record.state == RUNNING and wanted != len(group.replicas)
            ):
                self._rescale.discard(record.id)
                if record.state != SCALING:
                    self._set(record, SCALING)
                await self._pause(SCALING, self.transition_seconds)
                if not await self._scale(record, group, record.desired_replicas()):
                    return
                settling = time.monotonic() + self._deadline(record)
                continue
            group.probe_due(self.probe_period)
            ready = len(group.ready())
            if record.state == SCALING and ready:
                # After a rescale, RUNNING waits for the new replicas (or the deadline).
                settled = all(replica.ready for replica in group.members() if replica.alive())
                if settling is None or settled or time.monotonic() > settling:
                    settling = None
                    self._set(record, RUNNING)
            elif record.state == RUNNING and not ready:
                self._set(
                    record, SCALING, f"no replica is ready (readiness probe: {group.last_probe()})"
                )
            elif record.state == RUNNING and ready != record.available_replicas:
                record.available_replicas = ready
                self.save()
            await asyncio.sleep(_POLL)

    async def _supervise(self, record: AppRecord, group: ReplicaSet, when: str) -> bool:
        """Restart the replicas whose server exited; False once the app has FAILED because
        none is left running."""
        for replica in group.members():
            if replica.process is None or replica.stopping:
                continue
            code = replica.process.exit_status()
            if code is None:
                continue
            others = [other for other in group.members() if other is not replica]
            if not any(other.alive() for other in others):
                tail = log_tail(replica.log)
                await self._close_group(record, grace=0)
                message = (
                    f"the app's server exited with status {code} {when}"
                    if not others
                    else f"no replica of the app is left running: replica {replica.index}'s "
                    f"server, the last one, exited with status {code} {when}"
                )
                if tail:
                    message = f"{message}; end of its log:\n{tail}"
                self._set(record, FAILED, message)
                return False
            await group.reap(replica)
            if replica.ever_ready:
                group.note(replica, f"the server exited with status {code}; restarting it")
                replica.restarts += 1
                group.launch(
                    replica.index,
                    self._replica_port(group),
                    f"(restart {replica.restarts}: the previous server exited with status {code})",
                )
            else:
                group.note(
                    replica,
                    f"the server exited with status {code} before it was ever ready: not "
                    "restarted (it would fail again); a rescale or a start tries again",
                )
            self.save()
        return True

    def _replica_port(self, group: ReplicaSet) -> int:
        """The app's port when no balancer holds it, else one of the replica's own."""
        return group.record.port if group.balancer is None else self._free_port()

    # -- rescale ----------------------------------------------------------------------

    async def _scale(self, record: AppRecord, group: ReplicaSet, count: int) -> bool:
        """Start or stop replicas to reach ``count``; False when the app FAILED meanwhile."""
        if count > 1 and group.balancer is None:
            return await self._spread(record, group, count)
        for index in range(count):
            replica = group.replicas.get(index)
            if replica is None or replica.process is None:
                group.launch(index, self._replica_port(group), _note(group, index, count))
        extra = [replica for replica in group.members() if replica.index >= count]
        for replica in extra:
            group.note(replica, f"stopping: the app was scaled to {count} replica(s)")
        await asyncio.gather(*(group.remove(replica, self._grace(record)) for replica in extra))
        self.save()
        return True

    async def _spread(self, record: AppRecord, group: ReplicaSet, count: int) -> bool:
        """From one replica on the app's port to ``count`` behind a balancer there. The new
        replicas start first; once one is ready, the balancer takes the port from replica
        0, which starts again behind it: the URL only refuses connections for the moment
        between replica 0 closing its listener and the balancer opening its own."""
        added = [
            group.launch(index, self._free_port(), _note(group, index, count))
            for index in range(1, count)
        ]
        self.save()
        deadline = time.monotonic() + self._deadline(record)
        while not any(replica.ready for replica in added) and time.monotonic() < deadline:
            if not await self._supervise(record, group, "while scaling"):
                return False
            if not any(replica.alive() for replica in added):
                break
            group.probe_due(self.probe_period)
            await asyncio.sleep(_POLL)
        first = group.replicas[0]
        group.note(first, "moving behind the app's balancer: stopping, to start again")
        first.stopping = True
        first.ready = False
        if first.process is not None and first.process.exit_status() is None:
            first.process.popen.terminate()
        grace = self._grace(record)
        wait = self.runner.stop_grace if grace is None else grace
        if not await _until_free(record.port, first, wait):
            await self.runner.stop(first.key, grace=0)  # it kept its listener: no waiting more
        try:
            group.open_balancer()
        except UsageError:
            await self._close_group(record, grace=0)
            self._set(
                record,
                FAILED,
                f"cannot scale: the app's port 127.0.0.1:{record.port} is taken by another process",
            )
            return False
        await self.runner.stop(first.key, grace)
        first.process = None
        group.launch(0, self._free_port(), _note(group, 0, count))
        self.save()
        return True

    # -- down ---------------------------------------------------------------------------

    async def _close_group(self, record: AppRecord, grace: float | None) -> None:
        group = self.groups.pop(record.id, None)
        if group is not None:
            self.closing.add(group)
        # Also a close begun by a task since cancelled (a stop replaced by a forced
        # delete): the app's next state must not come before its replicas are down.
        for closing in [other for other in self.closing if other.record.id == record.id]:
            try:
                await closing.close(grace)
            finally:
                if closing.closing is not None and closing.closing.done():
                    self.closing.discard(closing)
        record.replicas.clear()

    async def _stopping(self, record: AppRecord) -> None:
        await asyncio.gather(self._close_group(record, self._grace(record)), self._pause(STOPPING))
        self.drop_volumes(record)
        self._set(record, STOPPED)

    async def _deleting(self, record: AppRecord) -> None:
        await asyncio.gather(self._close_group(record, self._grace(record)), self._pause(DELETING))
        self.apps.pop(record.id, None)
        self._set(record, DELETED)
        shutil.rmtree(self.app_dir(record.id), ignore_errors=True)

    # -- the control route ------------------------------------------------------------

    def restart_replica(self, app_id: str, index: int) -> Replica:
        """Kill one replica's server and start it again at once, with nothing in memory, as
        Kubernetes restarts a container."""
        record = self.apps.get(app_id)
        if record is None:
            raise ApiError(404, f"app {app_id} not found")
        group = self.groups.get(app_id)
        if group is None or record.state not in (SCALING, RUNNING):
            raise ApiError(409, f"app {app_id} is {record.state}: no replica runs")
        replica = group.replicas.get(index)
        if replica is None:
            raise ApiError(404, f"app {app_id} has no replica {index}")
        if replica.stopping:
            raise ApiError(409, f"replica {index} of app {app_id} is being stopped")
        group.note(replica, "killed by POST /_sandbox/.../restart; restarting it")
        group.kill(replica)
        replica.restarts += 1
        group.launch(
            index,
            self._replica_port(group),
            f"(restart {replica.restarts}: killed on request)",
        )
        self.save()
        return replica


def _note(group: ReplicaSet, index: int, count: int) -> str:
    return f"(image {group.image}, replica {index} of {count}, HOSTNAME {group.hostname(index)})"


async def _until_free(port: int, replica: Replica, grace: float) -> bool:
    """Wait until the port is free or the replica exited, up to ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process = replica.process
        if port_free(port) or process is None or process.exit_status() is not None:
            return True
        await asyncio.sleep(0.01)
    return False
