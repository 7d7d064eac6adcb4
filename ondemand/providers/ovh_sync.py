"""The model cache on OVH AI Deploy: pushing the app's model store to its bucket.

AI Deploy copies a volume's bucket into the app at start and does not copy it back: "AI
Deploy does not synchronize back your remote data" (ovh/docs, pages/public_cloud/
ai_machine_learning/deploy_guide_07_troubleshooting/guide.en-gb.md). The billing guide's
"remote data is synchronized back" at STOPPING (deploy_guide_06_billing_concept) describes the
notebooks' data lifecycle (gi_02_concepts_data: jobs sync back at FINALIZING, notebooks at
STOPPING; apps are not named), so it is not relied on: models pulled by a server are pushed
with a data sync while the app runs.

Route and shapes: ``POST /v1/app/{appId}/datasync`` with DataSyncSpec ``{direction: "push",
volume?: <status.volumes[].id>, manual?: bool}`` → 200 DataSync ``{id, spec, status: {state,
queuedAt, startedAt, endedAt, info: {code, message}, progress}}``; the app's
``status.dataSync`` lists its syncs (ovh/ovhai-python-sdk ``ovhai/api/app/
post_v1_app_app_id_datasync.py``, ``ovhai/models/data_sync*.py`` @8a58fd0). States: QUEUED,
RUNNING, DONE, FAILED, ERROR, INTERRUPTED (ovh/manager pci-ai-tools ``ai.volume.
DataSyncStateEnum``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ondemand.providers.base import CacheSync, parse_time
from ondemand.providers.ovh_spec import parse_volume

FINISHED = frozenset({"DONE", "FAILED", "ERROR", "INTERRUPTED"})


def cache_volume_id(app: Mapping[str, Any], volume: str) -> str | None:
    """The id OVH gave the volume that holds the model store (``status.volumes``)."""
    mount = parse_volume(volume).mount
    for entry in (app.get("status") or {}).get("volumes") or []:
        if str(entry.get("mountPath") or "").rstrip("/") == mount and entry.get("id"):
            return str(entry["id"])
    return None


def push_body(volume_id: str | None) -> dict[str, object]:
    body: dict[str, object] = {"direction": "push", "manual": True}
    if volume_id:
        body["volume"] = volume_id
    return body


def as_cache_sync(sync: Mapping[str, Any], volume: str) -> CacheSync:
    status = sync.get("status") or {}
    state = str(status.get("state") or "QUEUED").upper()
    info = status.get("info") or {}
    parsed = parse_volume(volume)
    return CacheSync(
        id=str(sync.get("id") or ""),
        state=state,
        finished=state in FINISHED,
        succeeded=state == "DONE",
        where=f"{parsed.container}@{parsed.alias}" + (f"/{parsed.prefix}" if parsed.prefix else ""),
        queued_at=parse_time(status.get("queuedAt") or sync.get("createdAt")),
        ended_at=parse_time(status.get("endedAt")),
        detail=info.get("message") if state != "DONE" else None,
    )


def last_push(app: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The app's latest push, by when it was queued."""
    syncs = [
        s
        for s in (app.get("status") or {}).get("dataSync") or []
        if isinstance(s, Mapping) and (s.get("spec") or {}).get("direction") == "push"
    ]
    if not syncs:
        return None
    return max(syncs, key=lambda s: str((s.get("status") or {}).get("queuedAt") or ""))
