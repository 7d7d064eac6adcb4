"""An emulated AI Deploy app: its record, its state and how the API renders it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

QUEUED, INITIALIZING, SCALING, RUNNING = "QUEUED", "INITIALIZING", "SCALING", "RUNNING"
STOPPING, STOPPED, FAILED, ERROR = "STOPPING", "STOPPED", "FAILED", "ERROR"
DELETING, DELETED = "DELETING", "DELETED"
STATES = (
    QUEUED,
    INITIALIZING,
    SCALING,
    RUNNING,
    STOPPING,
    STOPPED,
    FAILED,
    ERROR,
    DELETING,
    DELETED,
)

ACTIVE = frozenset({QUEUED, INITIALIZING, SCALING, RUNNING})
"""What ``stop`` accepts, and what a sandbox restart resumes."""
STARTABLE = frozenset({STOPPED, FAILED})
"""``start``: "Start a stopped app"; FAILED too, as users restart failed apps."""
DELETABLE = frozenset({STOPPED, FAILED, ERROR})
"""``delete`` without ``force``; with it, anything but an app already being deleted."""
BILLED = frozenset({SCALING, RUNNING})

_MESSAGES = {
    QUEUED: "App is queued",
    INITIALIZING: "App is initializing",
    SCALING: "App is scaling",
    RUNNING: "App is running",
    STOPPING: "App is stopping",
    STOPPED: "App is stopped",
    FAILED: "App failed",
    ERROR: "App is in error",
    DELETING: "App is being deleted",
    DELETED: "App is deleted",
}
OWNED_PREFIX = "ovh/"


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class AppRecord:
    id: str
    spec: dict[str, Any]
    user: str
    port: int
    created_at: str
    updated_at: str
    state: str = QUEUED
    history: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    available_replicas: int = 0
    data_syncs: list[dict[str, Any]] = field(default_factory=list)
    """The app's data syncs (``datasync.py``), oldest first, as ``status.dataSync`` shows them."""
    replicas: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Each replica's server process of this sandbox run, as index → (pid, port), so a
    restarted sandbox can find the orphans of one that was killed."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Replica 0's server (the only one of a one-replica app)."""
        first = self.replicas.get(0)
        return first[0] if first else None

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.spec.setdefault("labels", {})
        return labels

    def own_labels(self) -> None:
        """Keys under ``ovh/`` belong to the platform: whatever the user sent is replaced."""
        labels = {k: v for k, v in self.labels.items() if not k.startswith(OWNED_PREFIX)}
        labels["ovh/id"] = self.id
        labels["ovh/type"] = "app"
        self.spec["labels"] = labels

    def touch(self) -> None:
        self.updated_at = iso(now())

    def transition(self, state: str, message: str | None = None, code: str | None = None) -> None:
        moment = iso(now())
        self.state = state
        self.history.append({"state": state, "date": moment})
        self.info = {"code": code or f"APP_{state}", "message": message or _MESSAGES[state]}
        self.updated_at = moment
        if state != RUNNING:
            self.available_replicas = 0

    @property
    def last_transition(self) -> str:
        return self.history[-1]["date"] if self.history else self.created_at

    def desired_replicas(self) -> int:
        strategy = self.spec.get("scalingStrategy") or {}
        if "fixed" in strategy:
            return int(strategy["fixed"]["replicas"])
        return max(1, int(strategy.get("automatic", {}).get("replicasMin", 1)))

    def billed_seconds(self, until: datetime | None = None) -> float:
        """Seconds spent in the billed states (SCALING, RUNNING) so far."""
        total = 0.0
        end = until or now()
        for index, entry in enumerate(self.history):
            if entry["state"] not in BILLED:
                continue
            start = parse_iso(entry["date"])
            following = self.history[index + 1 :]
            stop = parse_iso(following[0]["date"]) if following else end
            total += max(0.0, (stop - start).total_seconds())
        return total

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "user": self.user,
            "spec": self.spec,
            "status": {
                "state": self.state,
                "url": self.url,
                "history": list(self.history),
                "info": dict(self.info),
                "availableReplicas": self.available_replicas,
                "lastTransitionDate": self.last_transition,
                "volumes": [
                    {
                        "id": f"{self.id}-volume-{index}",
                        "mountPath": volume["mountPath"],
                        "userVolumeId": None,
                    }
                    for index, volume in enumerate(self.spec.get("volumes", []))
                ],
                "dataSync": list(self.data_syncs),
            },
        }

    def to_store(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec,
            "user": self.user,
            "port": self.port,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "state": self.state,
            "history": self.history,
            "info": self.info,
            "availableReplicas": self.available_replicas,
            "dataSync": self.data_syncs,
            # Kept for a sandbox of an older version on this state directory.
            "pid": self.pid,
            "replicas": [
                {"index": index, "pid": pid, "port": port}
                for index, (pid, port) in sorted(self.replicas.items())
            ],
        }

    @classmethod
    def from_store(cls, data: dict[str, Any]) -> AppRecord:
        port = int(data["port"])
        replicas = {
            int(entry["index"]): (int(entry["pid"]), int(entry["port"]))
            for entry in data.get("replicas") or []
        }
        if not replicas and data.get("pid"):
            # Written before replicas: one server, on the app's port.
            replicas[0] = (int(data["pid"]), port)
        return cls(
            id=str(data["id"]),
            spec=dict(data["spec"]),
            user=str(data["user"]),
            port=port,
            created_at=str(data["createdAt"]),
            updated_at=str(data["updatedAt"]),
            state=str(data["state"]),
            history=list(data.get("history") or []),
            info=dict(data.get("info") or {}),
            available_replicas=int(data.get("availableReplicas") or 0),
            data_syncs=list(data.get("dataSync") or []),
            replicas=replicas,
        )
