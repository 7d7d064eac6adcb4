"""The emulated resources: endpoints, their workers, pods and network volumes.

Records keep their configuration under the API's own field names (validated on the way in),
so rendering is a copy plus the fields the platform computes, and the store is the same
JSON the API shows.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ondemand.sandbox.runpod import catalog

JSON = dict[str, Any]

QUEUE, LOAD_BALANCER = "QUEUE", "LOAD_BALANCER"
ENDPOINT_TYPES = (QUEUE, LOAD_BALANCER)

# Pod statuses (the spec's PodStatus) and the actions each allows (its podAction text).
PROVISIONING, STARTING, RUNNING = "PROVISIONING", "STARTING", "RUNNING"
EXITED, ERROR, TERMINATED = "EXITED", "ERROR", "TERMINATED"
POD_STATUSES = (PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED)
POD_ACTIONS = ("start", "stop", "restart", "terminate")
_ALLOWED = {
    RUNNING: ("stop", "restart", "terminate"),
    EXITED: ("start", "terminate"),
    ERROR: ("start", "terminate"),
    PROVISIONING: ("stop", "terminate"),
    STARTING: ("stop", "terminate"),
    TERMINATED: (),
}
UP = frozenset({PROVISIONING, STARTING, RUNNING})
"""Pod statuses that hold a GPU (billed) and that a sandbox restart provisions again."""

# Worker statuses (the spec's WorkerStatus). Internally a ready worker is READY; the API
# shows it RUNNING while it serves a request and IDLE otherwise.
THROTTLED, INITIALIZING, READY, UNHEALTHY = "THROTTLED", "INITIALIZING", "READY", "UNHEALTHY"

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int) -> str:
    """Ids as the platform's: lowercase letters and digits (14 for endpoints, pods and
    workers, 10 for network volumes)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Volume:
    id: str
    name: str
    size: int
    data_center: str
    type: str

    def to_api(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "dataCenter": self.data_center,
            "type": self.type,
        }

    @classmethod
    def from_store(cls, raw: JSON) -> Volume:
        return cls(
            str(raw["id"]), str(raw["name"]), int(raw["size"]), str(raw["dataCenter"]),
            str(raw["type"]),
        )  # fmt: skip


@dataclass
class Endpoint:
    id: str
    name: str
    type: str
    config: JSON
    """image, args, disk, ports, env, registry, gpu, workers, scaling, dataCenterIds,
    networkVolumes, timeout, flashboot: as validated, defaults filled in."""
    created_at: str
    version: int = 1

    @property
    def workers_min(self) -> int:
        return int(self.config["workers"]["min"])

    @property
    def workers_max(self) -> int:
        return int(self.config["workers"]["max"])

    @property
    def idle_timeout(self) -> float:
        return float(self.config["workers"]["idleTimeout"])

    @property
    def per_worker(self) -> float:
        """Concurrent requests one worker is meant to take (REQUEST_COUNT's value)."""
        scaling = self.config["scaling"]
        return float(scaling.get("requestCount") or 1)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.config.get("env") or {})

    def request_urls(self, base: str) -> JSON:
        if self.type == LOAD_BALANCER:
            lb = f"{base}/lb/{self.id}"
            return {"base": lb, "health": f"{lb}/ping"}
        api = f"{base}/ai/v2/{self.id}"
        return {
            "run": f"{api}/run",
            "runSync": f"{api}/runsync",
            "status": f"{api}/status",
            "stream": f"{api}/stream",
            "cancel": f"{api}/cancel",
            "retry": f"{api}/retry",
            "purgeQueue": f"{api}/purge-queue",
            "health": f"{api}/health",
        }

    def to_api(self, base: str) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "requestUrls": self.request_urls(base),
            **self.config,
            "createdAt": self.created_at,
        }

    def to_store(self) -> JSON:
        return {
            "id": self.id, "name": self.name, "type": self.type, "config": self.config,
            "createdAt": self.created_at, "version": self.version,
        }  # fmt: skip

    @classmethod
    def from_store(cls, raw: JSON) -> Endpoint:
        config = raw["config"]
        if not isinstance(config, dict):
            raise TypeError("config must be an object")
        return cls(
            str(raw["id"]), str(raw["name"]), str(raw["type"]), config, str(raw["createdAt"]),
            int(raw.get("version", 1)),
        )  # fmt: skip


@dataclass
class Worker:
    """One serverless worker: a slot of the endpoint and, unless throttled, a process."""

    id: str
    endpoint_id: str
    version: int
    gpu_type_id: str | None
    data_center_id: str | None
    gpu_count: int
    image: str | None
    status: str = INITIALIZING
    throttled: bool = False
    crashing: bool = False
    """Started with a broken environment by the ``crash`` fault: exits at once, forever."""
    routable: bool = True
    """False when the endpoint's PORT/PORT_HEALTH/ports make the health probe miss it."""
    port: int | None = None
    pid: int | None = None
    inflight: int = 0
    crashes: int = 0
    started_at: str | None = None
    started: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    stopping: bool = False
    detail: str = ""

    @property
    def key(self) -> str:
        return f"runpod-worker-{self.id}"

    @property
    def api_status(self) -> str:
        if self.status == READY:
            return "RUNNING" if self.inflight else "IDLE"
        return self.status

    def to_api(self, endpoint_version: int) -> JSON:
        up = self.started is not None and self.status != THROTTLED
        return {
            "id": self.id,
            "status": self.api_status,
            "isStale": self.version != endpoint_version,
            "version": self.version,
            "gpuCount": 0 if self.throttled else self.gpu_count,
            "image": self.image,
            "uptimeSeconds": int(time.monotonic() - self.started) if up and self.started else None,
            "gpuTypeId": None if self.throttled else self.gpu_type_id,
            "dataCenterId": None if self.throttled else self.data_center_id,
            "startedAt": self.started_at,
        }


@dataclass
class Pod:
    id: str
    name: str
    spec: JSON
    """image, args, disk, ports, env, registry, gpu, mounts, cloud, dataCenterIds,
    globalNetworking, locked: as validated, defaults filled in."""
    data_center_id: str
    port: int
    """The loopback port its server listens on, reserved at create, kept for its life."""
    created_at: str
    status: str = PROVISIONING
    started_at: str | None = None
    pid: int | None = None
    detail: str = ""
    tcp_ports: dict[str, int] = field(default_factory=dict)
    """Public ports of its ``/tcp`` ports: new ones at every start, as on the platform."""
    up_since: float | None = None

    @property
    def key(self) -> str:
        return f"runpod-pod-{self.id}"

    @property
    def gpu(self) -> JSON:
        gpu: JSON = self.spec["gpu"]
        return gpu

    def actions(self) -> list[str]:
        allowed = list(_ALLOWED[self.status])
        if self.spec.get("locked"):
            allowed = [a for a in allowed if a not in ("stop", "restart")]
        return allowed

    def service_port(self) -> int | None:
        """The port its server answers on inside the pod: ``PORT`` when the pod sets it,
        else its first ``<port>/http``."""
        http = [int(p.split("/")[0]) for p in self.spec.get("ports", []) if p.endswith("/http")]
        raw = str((self.spec.get("env") or {}).get("PORT", "")).strip()
        if raw.isdigit():
            return int(raw)
        return http[0] if http else None

    def cost(self) -> float:
        if self.status not in UP:
            return 0.0
        gpu = catalog.GPUS[self.gpu["id"]]
        price = gpu.community_price if self.spec.get("cloud") == "COMMUNITY" else gpu.secure_price
        return round(price * int(self.gpu.get("count", 1)), 4)

    def runtime(self) -> JSON | None:
        if self.status != RUNNING:
            return None
        ports = []
        for entry in self.spec.get("ports", []):
            private, _, kind = entry.partition("/")
            public = self.tcp_ports.get(private) if kind == "tcp" else None
            ports.append(
                {
                    "private": int(private),
                    "public": public,
                    "type": kind,
                    "ip": "127.0.0.1" if kind == "tcp" else None,
                }
            )
        uptime = int(time.monotonic() - self.up_since) if self.up_since is not None else 0
        return {
            "uptime": uptime,
            "gpus": [{"util": 0, "memoryUtil": 0} for _ in range(int(self.gpu.get("count", 1)))],
            "cpu": {"util": 1},
            "memory": {"util": 5},
            "ports": ports,
        }

    def to_api(self) -> JSON:
        spec = dict(self.spec)
        spec.pop("dataCenterIds", None)
        spec.pop("templateId", None)
        networking = bool(spec.pop("globalNetworking", False))
        out: JSON = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "actions": self.actions(),
            **spec,
            "mounts": spec.get("mounts") or {},
            "dataCenterId": self.data_center_id,
            "template": None,
            "cost": self.cost(),
            "locked": bool(spec.get("locked", False)),
            "globalNetworking": {"enabled": networking},
            "runtime": self.runtime(),
            "createdAt": self.created_at,
            "startedAt": self.started_at,
        }
        if networking:
            out["globalNetworking"].update(
                {"ip": "10.65.0.2", "internalDns": f"{self.id}.runpod.internal"}
            )
        return out

    def to_store(self) -> JSON:
        return {
            "id": self.id, "name": self.name, "spec": self.spec,
            "dataCenterId": self.data_center_id, "port": self.port,
            "createdAt": self.created_at, "status": self.status,
            "startedAt": self.started_at, "pid": self.pid, "detail": self.detail,
        }  # fmt: skip

    @classmethod
    def from_store(cls, raw: JSON) -> Pod:
        spec = raw["spec"]
        if not isinstance(spec, dict) or raw["status"] not in POD_STATUSES:
            raise ValueError("not a stored pod")
        pid = raw.get("pid")
        return cls(
            id=str(raw["id"]), name=str(raw["name"]), spec=spec,
            data_center_id=str(raw["dataCenterId"]), port=int(raw["port"]),
            created_at=str(raw["createdAt"]), status=str(raw["status"]),
            started_at=raw.get("startedAt"), pid=int(pid) if pid is not None else None,
            detail=str(raw.get("detail", "")),
        )  # fmt: skip
