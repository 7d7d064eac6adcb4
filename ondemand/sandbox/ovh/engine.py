"""The emulator's apps: what each API operation may do in each state, and the store.

Every change is written to ``<state>/ovh/apps.json`` at once (atomically), so a restarted
sandbox finds its apps; those that were up are queued again and walk back to RUNNING.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ondemand.processes import free_port
from ondemand.sandbox.apps import AppRunner, cancel_and_wait, finish, log_tail, reap_orphan
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.ovh import validate
from ondemand.sandbox.ovh.datasync import UNFINISHED, DataSyncs, drop_volumes, pull_volumes
from ondemand.sandbox.ovh.edits import apply_update, models_dir
from ondemand.sandbox.ovh.machine import ApiError, Machine
from ondemand.sandbox.ovh.model import (
    ACTIVE,
    DELETABLE,
    DELETING,
    QUEUED,
    RUNNING,
    STARTABLE,
    STOPPED,
    STOPPING,
    AppRecord,
    iso,
    now,
)
from ondemand.sandbox.ovh.replicas import log_index, log_name
from ondemand.sandbox.statefile import read_json, write_json_atomic

log = logging.getLogger("ondemand.sandbox")
# Spec fields no UpdateInput carries (see ``OvhEngine.update``).
FIXED_AT_CREATE = frozenset({"probe", "livenessProbe"})
# How long ``kill`` waits for the loop to close the groups' sockets: a loop too busy to
# must not hold up killing the processes.
_ABORT_WAIT = 5.0


class OvhEngine(Machine):
    """Owns the apps of the OVH emulator. Its methods run on the event loop that serves
    the API; ``begin()`` must be called from that loop before the first request."""

    def __init__(
        self,
        directory: Path,
        runner: AppRunner,
        faults: FaultSet,
        *,
        transition_seconds: float = 0.3,
        probe_period: float = 1.0,
        user: str = "sandbox-user",
    ) -> None:
        super().__init__(runner, faults, transition_seconds, probe_period)
        self.directory = directory
        self.user = user
        self.syncs = DataSyncs(self)
        self.syncs.pause = transition_seconds
        self._resume: list[str] = []
        self._last_created: datetime | None = None
        self._load()

    # -- persistence ----------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.directory / "apps.json"

    def app_dir(self, app_id: str) -> Path:
        return self.directory / "apps" / app_id

    @property
    def datastores(self) -> Path:
        """Where the buckets are: ``<alias>/<container>[/<prefix>]``, kept when apps go."""
        return self.directory / "datastores"

    def _load(self) -> None:
        stored = (read_json(self.state_file) or {}).get("apps")
        for raw in stored if isinstance(stored, list) else []:
            try:
                record = AppRecord.from_store(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("skipping an unreadable app in %s: %s", self.state_file, exc)
                continue
            for index, (pid, port) in sorted(record.replicas.items()):
                if reap_orphan(pid, port):
                    log.warning(
                        "stopped app %s's server (replica %d) left by a previous sandbox",
                        record.id, index,
                    )  # fmt: skip
            record.replicas.clear()
            for sync in record.data_syncs:
                if sync.get("status", {}).get("state") in UNFINISHED:
                    sync["status"]["state"] = "INTERRUPTED"
            if record.state == DELETING:
                shutil.rmtree(self.app_dir(record.id), ignore_errors=True)
                continue
            if record.state == STOPPING:
                record.transition(STOPPED)
            elif record.state in ACTIVE:
                self._resume.append(record.id)
            self.apps[record.id] = record
        self.save()

    def save(self) -> None:
        write_json_atomic(
            self.state_file, {"version": 1, "apps": [r.to_store() for r in self.apps.values()]}
        )

    # -- life of the engine ---------------------------------------------------------------

    def begin(self) -> None:
        """Bind to the running loop and resume the apps that were up when the sandbox
        stopped: they queue again and walk back to RUNNING on their old port and URL."""
        if self.loop is not None:
            return
        self.loop = asyncio.get_running_loop()
        for app_id in self._resume:
            record = self.apps.get(app_id)
            if record is not None:
                self._set(record, QUEUED, "App is queued again after a sandbox restart")
                self._drive(record, self._walk)
        self._resume.clear()
        self.save()

    async def aclose(self) -> None:
        """Stop every task and app process; the stored states stay as they were, so the
        next sandbox on this state directory resumes the apps that were up."""
        if self.closed:
            return
        self.closed = True
        await cancel_and_wait(list(self._tasks.values()))
        self._tasks.clear()
        # The closes the apps' tasks had begun are cut short, as the tasks were: their
        # processes get the runner's grace below, as every other app's do. Each close still
        # closes its group's sockets before it ends.
        closing = [group.closing for group in self.closing if group.closing is not None]
        groups = [*self.groups.values(), *(g for g in self.closing if g.closing is None)]
        self.closing.clear()
        self.groups.clear()
        with contextlib.suppress(asyncio.CancelledError):
            await finish(closing)
        await asyncio.gather(*(group.close(None) for group in groups), return_exceptions=True)
        await self.runner.stop_all()
        for record in self.apps.values():
            record.replicas.clear()
        self.save()

    def kill(self) -> None:
        """The blocking twin of ``aclose`` for when the loop is gone (or is this thread)."""
        if self.closed and not self.runner.processes:
            return
        self.closed = True
        for task in self._tasks.values():
            task.cancel()
        aborting = [group.abandon() for group in [*self.groups.values(), *self.closing]]
        self.groups.clear()
        self.closing.clear()
        # Blocking, as ``kill`` is: with the loop running on another thread, what only it
        # can close (the groups' sockets) is closed before this returns, unless the loop is
        # too busy to; on the loop's own thread that happens once this returns.
        concurrent.futures.wait([f for f in aborting if f is not None], timeout=_ABORT_WAIT)
        self.runner.kill_all()
        for record in self.apps.values():
            record.replicas.clear()
        self.save()

    # -- operations (the API's handlers call these) ---------------------------------------

    def find(self, app_id: str) -> AppRecord:
        record = self.apps.get(app_id)
        if record is None:
            raise ApiError(404, f"app {app_id} not found")
        return record

    def create(self, spec: dict[str, Any]) -> AppRecord:
        stamp = iso(self._creation_moment())
        record = AppRecord(
            id=str(uuid.uuid4()),
            spec=spec,
            user=self.user,
            port=self._reserve_port(),
            created_at=stamp,
            updated_at=stamp,
        )
        record.own_labels()
        self.apps[record.id] = record
        self._set(record, QUEUED)
        self._drive(record, self._walk)
        return record

    def _creation_moment(self) -> datetime:
        """Now, or a millisecond after the last app's creation: two apps created within one
        millisecond must not tie on ``createdAt``, or two clients racing to create the same
        app could each see theirs as the oldest (the order of creation is the order in which
        they become visible) and both keep it."""
        moment = now()
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # as written
        last = self._last_created
        if last is not None and moment <= last:
            moment = last + timedelta(milliseconds=1)
        self._last_created = moment
        return moment

    def start(self, app_id: str) -> None:
        record = self.find(app_id)
        if record.state not in STARTABLE:
            raise ApiError(
                400, f"app {app_id} is {record.state}: only a STOPPED or FAILED app can be started"
            )
        self._set(record, QUEUED)
        self._drive(record, self._walk)

    def stop(self, app_id: str) -> None:
        record = self.find(app_id)
        if record.state not in ACTIVE:
            raise ApiError(
                400,
                f"app {app_id} is {record.state}: only a running app "
                "(QUEUED, INITIALIZING, SCALING or RUNNING) can be stopped",
            )
        self.syncs.interrupt(record)
        self._set(record, STOPPING)
        self._drive(record, self._stopping)

    def delete(self, app_id: str, *, force: bool) -> None:
        record = self.find(app_id)
        if record.state == DELETING:
            raise ApiError(400, f"app {app_id} is already being deleted")
        if not force and record.state not in DELETABLE:
            raise ApiError(
                400,
                f"app {app_id} is {record.state}: stop it before deleting it, "
                "or delete it with force=true",
            )
        self.syncs.interrupt(record)
        self._set(record, DELETING)
        self._drive(record, self._deleting)

    def update(self, app_id: str, patch: dict[str, Any]) -> AppRecord:
        """Spec changes apply at the next start: the running server keeps its environment.

        What an update may change is the published UpdateInput: the AI API's SDK knows
        ``url``, ``defaultHttpPort``, ``grpcPort`` and ``deploymentStrategy``
        (ovh/ovhai-python-sdk ``ovhai/models/app_update.py`` @8a58fd0); the OVH API's newer
        types add ``command``, ``cpu``, ``gpu``, ``flavor`` and ``envVars`` (ovh/manager
        pci-ai-tools ``types/cloud/project/ai/app/UpdateInput.ts``). Neither has the probe:
        it is refused here, as a strict server refuses what its schema lacks."""
        record = self._editable(app_id)
        fixed = sorted(set(patch) & FIXED_AT_CREATE)
        if fixed:
            raise ApiError(
                400,
                f"{', '.join(fixed)} cannot be changed on an existing app: delete it and "
                "create it again with the new value",
            )
        try:
            apply_update(record.spec, patch)
        except validate.Invalid as exc:
            raise ApiError(400, str(exc)) from None
        record.touch()
        self.save()
        return record

    def set_image(self, app_id: str, url: str) -> None:
        record = self._editable(app_id)
        record.spec["image"] = url
        record.touch()
        self.save()

    def set_label(self, app_id: str, name: str, value: str | None) -> None:
        record = self._editable(app_id)
        if name.startswith("ovh/"):
            raise ApiError(400, f"label {name!r}: labels under 'ovh/' are set by the platform")
        if value is None:
            record.labels.pop(name, None)
        else:
            record.labels[name] = value
        record.touch()
        self.save()

    def set_scaling(self, app_id: str, strategy: dict[str, Any]) -> None:
        record = self._editable(app_id)
        record.spec["scalingStrategy"] = strategy
        record.touch()
        if record.state == RUNNING:
            self._rescale.add(app_id)
        self.save()

    def log_text(self, app_id: str, tail: int | None, replica: int | None = None) -> str:
        """One replica's log, or every replica's, replica 0 first. Replicas stopped by a
        rescale keep theirs until the app is deleted."""
        record = self.find(app_id)
        logs = self.replica_logs(record)
        if replica is not None and replica not in logs:
            raise ApiError(400, f"app {app_id} has no replica {replica} (replicas: 0-{max(logs)})")
        text = ""
        for index in sorted(logs) if replica is None else [replica]:
            if text and not text.endswith("\n"):
                text += "\n"
            if tail is not None:
                text += log_tail(logs[index], lines=tail, chars=1_000_000) + "\n"
                continue
            with contextlib.suppress(OSError):
                text += logs[index].read_text(errors="replace")
        return text

    def replica_logs(self, record: AppRecord) -> dict[int, Path]:
        """The log of each replica the app has, or had since it was created."""
        directory = self.app_dir(record.id)
        logs = {index: directory / log_name(index) for index in range(record.desired_replicas())}
        with contextlib.suppress(OSError):
            for path in directory.iterdir():
                index = log_index(path.name)
                if index is not None:
                    logs.setdefault(index, path)
        return logs

    def _editable(self, app_id: str) -> AppRecord:
        record = self.find(app_id)
        if record.state == DELETING:
            raise ApiError(400, f"app {app_id} is being deleted")
        return record

    def _reserve_port(self) -> int:
        taken = {record.port for record in self.apps.values()}
        port = free_port()
        while port in taken:
            port = free_port()
        return port

    def models_dir(self, record: AppRecord) -> Path:
        return models_dir(record.spec, self.app_dir(record.id))

    def pull_volumes(self, record: AppRecord) -> None:
        pull_volumes(record, self.app_dir(record.id), self.datastores)

    def drop_volumes(self, record: AppRecord) -> None:
        drop_volumes(self.app_dir(record.id))
