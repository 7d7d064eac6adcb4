"""Volumes as AI Deploy has them: pulled from the bucket at start, never pushed back unless a
data sync is asked for.

OVH's troubleshooting guide: "AI Deploy does not synchronize back your remote data"
(github.com/ovh/docs, pages/public_cloud/ai_machine_learning/deploy_guide_07_troubleshooting/
guide.en-gb.md @126ab2b, updated 2023-12-01). The billing guide's "remote data is synchronized
back" at STOPPING (deploy_guide_06_billing_concept @154999a) repeats the notebooks' data
lifecycle (gi_02_concepts_data): jobs and notebooks sync back, apps do not. So here an app's
volume is a copy of its bucket made at INITIALIZING; what the app writes stays in that copy,
which is dropped when the app stops; only ``POST /v1/app/{id}/datasync`` with ``direction:
push`` copies it to the bucket (``pull`` copies the bucket into the running app again).

The route, body and answer follow the AI API's SDK (github.com/ovh/ovhai-python-sdk,
``ovhai/api/app/post_v1_app_app_id_datasync.py``, ``ovhai/models/data_sync*.py`` @8a58fd0):
``{direction: pull|push, volume?, manual?}`` → 200 DataSync ``{id, createdAt, updatedAt, spec,
status: {state, queuedAt, startedAt, endedAt, info: {code, message}, progress: [...]}}``;
states QUEUED, RUNNING, DONE, FAILED, ERROR, INTERRUPTED and info codes ``DATASYNC_*`` as the
OVH API's types list them (ovh/manager ``ai.volume.DataSyncStateEnum``). "Initiate a Data
Synchronization on a running app": any other state is a 400. A stop interrupts a sync.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ondemand.sandbox.ovh.checks import Invalid, boolean, keys, obj, text
from ondemand.sandbox.ovh.edits import safe_part, volume_dir
from ondemand.sandbox.ovh.machine import ApiError
from ondemand.sandbox.ovh.model import RUNNING, AppRecord, iso, now

if TYPE_CHECKING:
    from ondemand.sandbox.http import Request
    from ondemand.sandbox.ovh.engine import OvhEngine

QUEUED, SYNCING, DONE, INTERRUPTED = "QUEUED", "RUNNING", "DONE", "INTERRUPTED"
UNFINISHED = frozenset({QUEUED, SYNCING})
_MESSAGES = {
    QUEUED: "Data sync is queued",
    SYNCING: "Data sync is running",
    DONE: "Data sync is done",
    INTERRUPTED: "Data sync was interrupted: the app stopped",
}


def bucket_dir(volume: dict[str, Any], datastores: Path) -> Path | None:
    """The directory standing for a dataStore volume's bucket (and prefix); None for other
    sources. Aliases keep their case: ``s3-gra`` and ``S3-GRA`` are two datastores."""
    store = volume.get("dataStore")
    if not store:
        return None
    base = datastores / safe_part(store["alias"]) / safe_part(store["container"])
    for part in str(store.get("prefix") or "").split("/"):
        if part:
            base = base / safe_part(part)
    return base


def pull_volumes(record: AppRecord, app_dir: Path, datastores: Path) -> None:
    """INITIALIZING: each dataStore volume starts as a copy of its bucket."""
    drop_volumes(app_dir)
    for index, volume in enumerate(record.spec.get("volumes", [])):
        target = volume_dir(app_dir, index)
        source = bucket_dir(volume, datastores)
        if source is not None and source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)


def drop_volumes(app_dir: Path) -> None:
    """STOPPED: the volumes were the run's; what was not pushed is gone."""
    shutil.rmtree(app_dir / "volumes", ignore_errors=True)


def _copy(source: Path, target: Path, *, delete: bool) -> tuple[int, int, int]:
    """Add and update every file of ``source`` in ``target`` (and with ``delete``, remove
    what ``source`` lacks), as RW and RWD volumes sync. Answers (files, bytes, deleted)."""
    files = size = deleted = 0
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Through a temporary name: a reader of the bucket never sees half a file.
        partial = out.with_name(out.name + ".datasync-partial")
        shutil.copyfile(path, partial)
        partial.replace(out)
        files += 1
        size += path.stat().st_size
    if delete:
        for path in sorted(target.rglob("*"), reverse=True):
            if path.is_file() and not (source / path.relative_to(target)).exists():
                path.unlink()
                deleted += 1
    return files, size, deleted


def sync_spec(body: object) -> dict[str, Any]:
    """DataSyncSpec: ``direction`` (pull|push), optional ``volume`` (a volume id from
    ``status.volumes``) and ``manual``; ``appId``/``jobId`` may echo the target."""
    data = obj(body, "the request body")
    keys(data, {"direction", "volume", "manual", "appId", "jobId"}, "DataSyncSpec")
    direction = data.get("direction")
    if direction not in ("pull", "push"):
        raise Invalid(f"direction must be 'pull' or 'push', got {direction!r}")
    spec: dict[str, Any] = {"direction": direction, "manual": True}
    if data.get("manual") is not None:
        spec["manual"] = boolean(data["manual"], "manual")
    if data.get("volume") is not None:
        spec["volume"] = text(data["volume"], "volume")
    return spec


class DataSyncs:
    """The data syncs of the emulator's apps: started by the route, run on the loop."""

    def __init__(self, engine: OvhEngine) -> None:
        self.engine = engine
        self.pause = 0.0
        """Seconds each sync stays QUEUED, then RUNNING (the emulator's transition time)."""
        self.hold: threading.Event | None = None
        """When set to an Event, syncs stay QUEUED until it is set: a push still under way
        when a test (or a rehearsal) decides, whatever the machine's speed."""
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, record: AppRecord, spec: dict[str, Any]) -> dict[str, Any]:
        if record.state != RUNNING:
            raise ApiError(
                400, f"app {record.id} is {record.state}: a data sync needs a RUNNING app"
            )
        volumes = self._volumes(record, spec)
        stamp = iso(now())
        sync: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "createdAt": stamp,
            "updatedAt": stamp,
            "spec": {**spec, "appId": record.id},
            "status": {"queuedAt": stamp, "progress": []},
        }
        _set(sync, QUEUED)
        record.data_syncs.append(sync)
        self.engine.save()
        loop = self.engine.loop
        if loop is None:
            raise RuntimeError("the OVH emulator was used before begin()")
        task = loop.create_task(self._run(record, sync, volumes), name=f"ovh-datasync-{sync['id']}")
        self._tasks[sync["id"]] = task
        task.add_done_callback(lambda _t: self._tasks.pop(sync["id"], None))
        return sync

    def _volumes(self, record: AppRecord, spec: dict[str, Any]) -> list[int]:
        """The volumes a sync covers: the one named, else every dataStore volume; a push
        skips read-only ones (OVH never syncs RO volumes back)."""
        volumes = record.spec.get("volumes", [])
        indexes = [i for i, v in enumerate(volumes) if v.get("dataStore")]
        if "volume" in spec:
            wanted = [i for i in indexes if f"{record.id}-volume-{i}" == spec["volume"]]
            if not wanted:
                raise ApiError(400, f"app {record.id} has no datastore volume {spec['volume']}")
            indexes = wanted
        if spec["direction"] == "push":
            indexes = [i for i in indexes if volumes[i].get("permission") != "RO"]
        return indexes

    async def _run(self, record: AppRecord, sync: dict[str, Any], volumes: list[int]) -> None:
        if self.pause:
            await asyncio.sleep(self.pause)
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait)
        if sync["status"]["state"] != QUEUED:
            return  # interrupted while queued
        _set(sync, SYNCING)
        sync["status"]["startedAt"] = sync["updatedAt"]
        self.engine.save()
        if self.pause:
            await asyncio.sleep(self.pause)
        app_dir = self.engine.app_dir(record.id)
        datastores = self.engine.datastores
        push = sync["spec"]["direction"] == "push"
        for index in volumes:
            volume = record.spec["volumes"][index]
            bucket = bucket_dir(volume, datastores)
            local = volume_dir(app_dir, index)
            if bucket is None or sync["status"]["state"] != SYNCING:
                continue
            source, target = (local, bucket) if push else (bucket, local)
            files, size, deleted = await asyncio.to_thread(
                _copy, source, target, delete=volume.get("permission") == "RWD"
            )
            store = volume["dataStore"]
            sync["status"]["progress"].append(
                {
                    "id": str(uuid.uuid4()),
                    "createdAt": iso(now()),
                    "updatedAt": iso(now()),
                    "direction": sync["spec"]["direction"],
                    "info": f"{store['container']}@{store['alias']}",
                    "state": DONE,
                    "total": files,
                    "processed": files,
                    "completed": files,
                    "skipped": 0,
                    "failed": 0,
                    "deleted": deleted,
                    "transferredBytes": size,
                }
            )
        if sync["status"]["state"] == SYNCING:
            _set(sync, DONE)
            sync["status"]["endedAt"] = sync["updatedAt"]
        self.engine.save()

    def interrupt(self, record: AppRecord) -> None:
        """The app stops: a sync not finished ends INTERRUPTED, its copy cut short."""
        for sync in record.data_syncs:
            if sync["status"]["state"] in UNFINISHED:
                task = self._tasks.pop(sync["id"], None)
                if task is not None:
                    task.cancel()
                _set(sync, INTERRUPTED)
                sync["status"]["endedAt"] = sync["updatedAt"]


def _set(sync: dict[str, Any], state: str) -> None:
    stamp = iso(now())
    sync["updatedAt"] = stamp
    sync["status"]["state"] = state
    sync["status"]["info"] = {"code": f"DATASYNC_{state}", "message": _MESSAGES[state]}


async def create_datasync(engine: OvhEngine, request: Request) -> tuple[int, Any]:
    """``POST /v1/app/{id}/datasync``."""
    record = engine.find(request.params["id"])
    try:
        spec = sync_spec(request.json())
    except Invalid as exc:
        raise ApiError(400, str(exc)) from None
    return 200, engine.syncs.start(record, spec)
