"""The emulator's resources and what each REST v2 operation does to them.

Endpoints, pods and network volumes are written to ``<state>/runpod/{endpoints,pods,
volumes}.json`` after every change (atomically), so a restarted sandbox finds them: pods
that were up provision again on their old port, and each endpoint's scaler starts its
``workers.min`` workers again (workers themselves are not stored: on the platform too, a
worker is disposable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ondemand.processes import free_port
from ondemand.sandbox.apps import AppRunner, reap_orphan
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.runpod import endpoint_input, pod_input, volume_input
from ondemand.sandbox.runpod.fleet import Fleet
from ondemand.sandbox.runpod.model import (
    TERMINATED,
    UP,
    Endpoint,
    Pod,
    Volume,
    iso,
    new_id,
)
from ondemand.sandbox.runpod.pods import PodLife
from ondemand.sandbox.runpod.problems import ApiError
from ondemand.sandbox.statefile import read_json, write_json_atomic

log = logging.getLogger("ondemand.sandbox")
Record = TypeVar("Record")


class RunPodEngine:
    """Owns the emulator's state. Its methods run on the event loop that serves the API;
    ``begin()`` must be called from that loop before the first request."""

    def __init__(
        self,
        directory: Path,
        runner: AppRunner,
        faults: FaultSet,
        *,
        transition_seconds: float = 0.3,
        probe_period: float = 1.0,
        no_worker_wait: float = 120.0,
        proxy_timeout: float = 100.0,
    ) -> None:
        self.directory = directory
        self.runner = runner
        self.faults = faults
        self.no_worker_wait = no_worker_wait
        self.proxy_timeout = proxy_timeout
        self.endpoints: dict[str, Endpoint] = {}
        self.volumes: dict[str, Volume] = {}
        self.fleet = Fleet(
            runner, faults, directory, self.endpoints, self.volume_dir, self._volume_dc,
            transition_seconds=transition_seconds, probe_period=probe_period,
        )  # fmt: skip
        self.pod_life = PodLife(
            runner, faults, directory, self.volume_dir, self.save_pods,
            transition_seconds=transition_seconds,
        )  # fmt: skip
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._resume: list[str] = []
        self._load()

    @property
    def pods(self) -> dict[str, Pod]:
        return self.pod_life.pods

    # -- persistence --------------------------------------------------------------------

    def volume_dir(self, volume_id: str) -> Path:
        return self.directory / "volumes" / volume_id

    def _volume_dc(self, volume_id: str) -> str | None:
        volume = self.volumes.get(volume_id)
        return volume.data_center if volume is not None else None

    def _load(self) -> None:
        self.volumes.update(self._read("volumes", "networkVolumes", Volume.from_store))
        self.endpoints.update(self._read("endpoints", "endpoints", Endpoint.from_store))
        for pod in self._read("pods", "pods", Pod.from_store).values():
            if pod.pid is not None and reap_orphan(pod.pid, pod.port):
                log.warning("stopped pod %s's server left by a previous sandbox", pod.id)
            pod.pid = None
            if pod.status == TERMINATED:
                shutil.rmtree(self.pod_life.pod_dir(pod.id), ignore_errors=True)
                continue
            if pod.status in UP:
                self._resume.append(pod.id)
            self.pods[pod.id] = pod
        self.save_volumes()
        self.save_endpoints()
        self.save_pods()

    def _read(self, name: str, key: str, parse: Callable[[Any], Record]) -> dict[str, Record]:
        path = self.directory / f"{name}.json"
        stored = (read_json(path) or {}).get(key)
        found: dict[str, Record] = {}
        for raw in stored if isinstance(stored, list) else []:
            try:
                record = parse(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("skipping an unreadable entry of %s: %s", path, exc)
                continue
            found[str(raw["id"])] = record
        return found

    def _write(self, name: str, key: str, items: list[dict[str, Any]]) -> None:
        write_json_atomic(self.directory / f"{name}.json", {"version": 1, key: items})

    def save_volumes(self) -> None:
        self._write("volumes", "networkVolumes", [v.to_api() for v in self.volumes.values()])

    def save_endpoints(self) -> None:
        self._write("endpoints", "endpoints", [e.to_store() for e in self.endpoints.values()])

    def save_pods(self) -> None:
        kept = [p.to_store() for p in self.pods.values() if p.status != TERMINATED]
        self._write("pods", "pods", kept)

    # -- life ---------------------------------------------------------------------------

    def begin(self) -> None:
        if self.loop is not None:
            return
        self.loop = asyncio.get_running_loop()
        self.fleet.begin(self.loop)
        self.pod_life.begin(self.loop, self._resume)
        self._resume.clear()

    async def aclose(self) -> None:
        """Stop every worker and pod server; the stored state stays, so the next sandbox
        on this state directory resumes it."""
        if self.closed:
            return
        self.closed = True
        await asyncio.gather(self.fleet.aclose(), self.pod_life.aclose())
        self.save_pods()

    def kill(self) -> None:
        """The blocking twin of ``aclose`` for when the loop is gone (or is this thread):
        the caller kills the runner's processes."""
        self.closed = True
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self.fleet.kill()
            self.pod_life.kill()
        self.save_pods()

    # -- network volumes ----------------------------------------------------------------

    def find_volume(self, volume_id: str) -> Volume:
        return _found(self.volumes, volume_id, "network volume")

    def create_volume(self, body: object) -> Volume:
        name, size, dc, kind = volume_input.create(body)
        volume = Volume(new_id(10), name, size, dc, kind)
        self.volumes[volume.id] = volume
        self.save_volumes()
        return volume

    def update_volume(self, volume_id: str, body: object) -> Volume:
        volume = self.find_volume(volume_id)
        changes = volume_input.update(body, volume.size)
        volume.name = changes.get("name", volume.name)
        volume.size = changes.get("size", volume.size)
        self.save_volumes()
        return volume

    def delete_volume(self, volume_id: str) -> None:
        volume = self.find_volume(volume_id)
        users = [f"endpoint {e.id}" for e in self.endpoints.values()
                 if volume_id in e.config.get("networkVolumes", [])]  # fmt: skip
        for pod in self.pods.values():
            mounts = (pod.spec.get("mounts") or {}).get("network", [])
            if any(mount["volumeId"] == volume_id for mount in mounts):
                users.append(f"pod {pod.id}")
        if users:
            raise ApiError(
                400,
                f"network volume {volume.id} is attached to {', '.join(users)}: detach it first",
            )
        del self.volumes[volume_id]
        shutil.rmtree(self.volume_dir(volume_id), ignore_errors=True)
        self.save_volumes()

    # -- serverless endpoints -----------------------------------------------------------

    def find_endpoint(self, endpoint_id: str) -> Endpoint:
        return _found(self.endpoints, endpoint_id, "endpoint")

    def create_endpoint(self, body: object) -> Endpoint:
        name, kind, config = endpoint_input.create(body, self.volumes)
        if config.get("flashboot", "OFF") != "OFF" and self.faults.take("flashboot_rename"):
            name += " -fb"
        endpoint = Endpoint(new_id(14), name, kind, config, iso())
        self.endpoints[endpoint.id] = endpoint
        self.save_endpoints()
        log.info("runpod endpoint %s (%s, %s) created", endpoint.id, name, kind)
        return endpoint

    def update_endpoint(self, endpoint_id: str, body: object) -> Endpoint:
        endpoint = self.find_endpoint(endpoint_id)
        name, config, release = endpoint_input.update(
            body, endpoint.type, endpoint.config, self.volumes
        )
        endpoint.name = name or endpoint.name
        endpoint.config = config
        if release:
            endpoint.version += 1
        self.save_endpoints()
        self.fleet.reconcile(endpoint)
        return endpoint

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Deleted whatever its workers' bounds: the REST spec documents no precondition
        ("all workers are terminated"), unlike GraphQL's deleteEndpoint."""
        self.find_endpoint(endpoint_id)
        del self.endpoints[endpoint_id]
        self.fleet.forget(endpoint_id)
        self.save_endpoints()

    # -- pods ---------------------------------------------------------------------------

    def find_pod(self, pod_id: str) -> Pod:
        return _found(self.pods, pod_id, "pod")

    def create_pod(self, body: object) -> Pod:
        name, spec, place = pod_input.create(body, self.volumes)
        refused = refusal(self.faults)
        if refused is not None:
            raise refused
        taken = {pod.port for pod in self.pods.values()}
        port = free_port()
        while port in taken:
            port = free_port()
        pod = Pod(new_id(14), name, spec, place, port, iso())
        self.pod_life.create(pod)
        return pod

    def update_pod(self, pod_id: str, body: object) -> Pod:
        """Changes to the image, env or ports apply at the next start or restart."""
        pod = self.find_pod(pod_id)
        if pod.status == TERMINATED:
            raise ApiError(404, f"pod {pod_id} not found")
        name, spec = pod_input.update(body, pod.spec)
        pod.name = name or pod.name
        pod.spec = spec
        self.save_pods()
        return pod

    def pod_action(self, pod_id: str, action: str) -> Pod:
        pod = self.find_pod(pod_id)
        self.pod_life.act(pod, action)
        return pod

    def delete_pod(self, pod_id: str) -> None:
        self.pod_life.terminate(self.find_pod(pod_id))


# Pod-create refusals, as RunPod words them (problem+json, REST v2): 400 when the GPU and
# data center cannot be placed (the wording of RunPod's pod deploy since its GraphQL API),
# 402 when the balance is too low, 403 when the account may not use that GPU.
_REFUSALS = (
    ("no_capacity", 400, "There are no longer any instances available with the requested "
     "specifications. Please refresh and try again."),
    ("insufficient_balance", 402, "insufficient balance: your account balance is too low "
     "to deploy this pod"),
    ("pool_forbidden", 403, "access denied: this GPU type is not available to your account"),
)  # fmt: skip


def refusal(faults: FaultSet) -> ApiError | None:
    for kind, status, detail in _REFUSALS:
        if faults.take(kind):
            return ApiError(status, detail)
    return None


def _found(records: dict[str, Record], key: str, what: str) -> Record:
    record = records.get(key)
    if record is None:
        raise ApiError(404, f"{what} {key} not found")
    return record
