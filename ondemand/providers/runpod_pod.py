"""A RunPod GPU pod (REST v2), started and stopped: the simpler, always-addressable option.

The URL is the pod's HTTP proxy ``https://<podId>-8080.proxy.runpod.net`` (public: our
proxy does the auth; it cuts requests at 100 s, so clients should stream). A stopped pod
keeps its volume disk, which still bills; a resumed pod may find its GPU rented by someone
else ("zero GPUs"): the error says to wait, or to delete and deploy again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ondemand.errors import CapacityError, ConfigError
from ondemand.providers.base import (
    CREATED_BY_ANOTHER,
    Deployment,
    Provider,
    Spec,
    Status,
    map_status,
    parse_time,
)
from ondemand.providers.ovh_spec import check_image, digest
from ondemand.providers.runpod_api import (
    ENV_SPEC,
    RunpodApi,
    label_env,
    labels,
    managed,
    network_volume_note,
    run_label_env,
    the_one_named,
)
from ondemand.providers.runpod_spec import pod_gpu_type

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig


STATES = {
    "PROVISIONING": Status.PENDING,
    "STARTING": Status.STARTING,
    "RUNNING": Status.RUNNING,
    "EXITED": Status.STOPPED,
    "ERROR": Status.FAILED,
    "TERMINATED": Status.ABSENT,
}
MOUNT = "/workspace"
MODELS_DIR = f"{MOUNT}/ollama-models"
_ZERO_GPU_WORDS = ("gpu", "not enough", "no longer available", "unavailable")


def _check_mount_change(name: str, current: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """What REST v2 can change in place: the size and path of a volume disk, the path of a
    network volume. Not the kind of mount, nor which network volume (``runpod/docs``
    ``api-reference-v2/openapi.json`` @fed16bc, ``Mounts``: "Mount kind is fixed at
    create", "The volumeId of a network mount is immutable")."""
    kinds = (set(current), set(wanted))
    same_volume = [m.get("volumeId") for m in current.get("network") or []] == [
        m.get("volumeId") for m in wanted.get("network") or []
    ]
    if kinds[0] == kinds[1] and same_volume:
        return

    def shown(mounts: Mapping[str, Any]) -> str:
        if mounts.get("network"):
            return "network volume " + str(mounts["network"][0].get("volumeId"))
        if mounts.get("persistent"):
            return f"a {mounts['persistent'].get('size')} GB volume disk"
        return "no volume"

    raise ConfigError(
        f"{name}: the pod has {shown(current)}; the config asks for {shown(wanted)}, which "
        "RunPod cannot change on an existing pod",
        cause="a pod's kind of storage and its network volume are fixed when it is created",
        hint="'ondemand delete' then 'ondemand up' makes a new pod with the new storage (the "
        "model cache on a volume disk goes with the old pod; a network volume keeps it), or "
        "set runpod.network_volume / runpod.pod_volume back",
    )


class RunpodPodProvider(Provider):
    """GPU pods; deployment ids are the deployment names."""

    name: ClassVar[str] = "runpod-pod"

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig) -> None:
        super().__init__(env=env, config=config)
        self.config = config.config
        self.runpod = RunpodApi(env=env, config=config)
        self._ids: dict[str, str] = {}  # deployment name -> pod id, once known

    def close(self) -> None:
        self.runpod.close()

    def _named(self, name: str) -> list[dict[str, Any]]:
        body = self.runpod.get("list pods", "/v2/pods")
        items = body.get("pods", []) if isinstance(body, dict) else []
        return [
            p
            for p in items
            if isinstance(p, dict) and managed(p, name) and p.get("status") != "TERMINATED"
        ]

    def _find(self, name: str) -> dict[str, Any] | None:
        """The pod, by id once it is known (one GET, not a listing: the key's rate limit is
        shared by every job), else by our labels."""
        known = self._ids.get(name)
        if known is not None:
            pod = self.runpod.get_or_none("read the pod", f"/v2/pods/{known}")
            if isinstance(pod, dict) and managed(pod, name) and pod.get("status") != "TERMINATED":
                return pod
            del self._ids[name]
        found = the_one_named(self._named(name), "pods", name)
        if found is not None and found.get("id"):
            self._ids[name] = str(found["id"])
        return found

    def _url(self, pod: Mapping[str, Any]) -> str:
        return self.runpod.pod_proxy.format(pod_id=pod["id"], port=self.config.port)

    def _deployment(
        self, name: str, pod: Mapping[str, Any] | None, detail: str | None = None
    ) -> Deployment:
        if pod is None:
            return Deployment(id=name, name=name, status=Status.ABSENT)
        state = str(pod.get("status") or "").upper()
        status = map_status(STATES, state)
        if status is Status.STOPPED and not detail:
            detail = self.stopped_note()
        return Deployment(
            id=name,
            name=name,
            status=status,
            vendor_state=state,
            url=self._url(pod),
            labels=labels(pod),
            created_at=parse_time(pod.get("createdAt")),
            running_since=parse_time(pod.get("startedAt")) if status is Status.RUNNING else None,
            detail=detail,
            image=pod.get("image") or pod.get("imageName"),
        )

    def stopped_note(self) -> str:
        """What still bills while the pod is stopped: the network volume when it has one,
        else its volume disk."""
        if self.config.runpod.network_volume:
            return network_volume_note(self.config.runpod)
        size = self.config.runpod.pod_volume
        return (
            f"a stopped pod still bills its {size} GB volume disk (about "
            f"${size * 0.20:.2f}/month); 'ondemand down --delete' removes it"
            if size
            else ""
        )

    def kept_after_delete(self) -> str:
        """The volume disk goes with the pod; only a network volume outlives it."""
        return network_volume_note(self.config.runpod)

    # -- the Provider contract -----------------------------------------------------------------

    def find(self, name: str) -> Deployment | None:
        pod = self._find(name)
        return None if pod is None else self._deployment(name, pod)

    def list_managed(self) -> list[Deployment]:
        body = self.runpod.get("list pods", "/v2/pods")
        items = body.get("pods", []) if isinstance(body, dict) else []
        return [
            self._deployment(str(p.get("name")), p)
            for p in items
            if isinstance(p, dict) and managed(p) and p.get("status") != "TERMINATED"
        ]

    def status(self, deployment_id: str) -> Deployment:
        return self._deployment(deployment_id, self._find(deployment_id))

    def deploy(self, spec: Spec) -> Deployment:
        body = self.pod_spec(spec)
        current = self._find(spec.name)
        if current is None:
            created, ours = self.runpod.create(
                "pod", "/v2/pods", body, lambda: self._named(spec.name), looked=True
            )
            if created.get("id"):
                self._ids[spec.name] = str(created["id"])
            return self._deployment(spec.name, created, "created" if ours else CREATED_BY_ANOTHER)
        if (current.get("env") or {}).get(ENV_SPEC) == body["env"][ENV_SPEC]:
            return self._deployment(spec.name, current, "unchanged")
        update = {k: v for k, v in body.items() if k in ("image", "env", "ports", "disk")}
        mounts = body.get("mounts") or {}
        if mounts != (current.get("mounts") or {}):
            _check_mount_change(spec.name, current.get("mounts") or {}, mounts)
            update["mounts"] = mounts
        updated = self.runpod.send("update the pod", "PATCH", f"/v2/pods/{current['id']}", update)
        return self._deployment(spec.name, updated or current, "updated")

    def start(self, deployment_id: str) -> Deployment:
        pod = self._find(deployment_id)
        if pod is None:
            return self._deployment(deployment_id, None)
        state = str(pod.get("status") or "").upper()
        if state in ("RUNNING", "STARTING", "PROVISIONING"):
            return self._deployment(deployment_id, pod, f"already {state}")
        try:
            self.runpod.send("start the pod", "POST", f"/v2/pods/{pod['id']}/action",
                             {"action": "start"})  # fmt: skip
        except (ConfigError, CapacityError) as exc:
            if any(word in exc.message.lower() for word in _ZERO_GPU_WORDS):
                raise CapacityError(
                    f"{deployment_id}: the pod's machine has no free GPU ({exc.message})",
                    cause="a stopped pod stays on its machine, and its GPU was rented meanwhile",
                    hint="wait and try again, or 'ondemand delete' then 'ondemand up' to deploy "
                    "a new pod elsewhere (a network volume keeps the model cache across that)",
                ) from exc
            raise
        return self.status(deployment_id)

    def stop(self, deployment_id: str) -> Deployment:
        pod = self._find(deployment_id)
        if pod is None or str(pod.get("status") or "").upper() in ("EXITED", "ERROR"):
            return self._deployment(deployment_id, pod)
        self.runpod.send("stop the pod", "POST", f"/v2/pods/{pod['id']}/action",
                         {"action": "stop"})  # fmt: skip
        return self.status(deployment_id)

    def delete(self, deployment_id: str) -> None:
        pod = self._find(deployment_id)
        if pod is not None:
            self.runpod.send("terminate the pod", "DELETE", f"/v2/pods/{pod['id']}")

    def deployed_env(self, deployment_id: str) -> dict[str, str]:
        pod = self._find(deployment_id)
        return {str(k): str(v) for k, v in ((pod or {}).get("env") or {}).items() if v}

    def log_hint(self, deployment: Deployment) -> str | None:
        pod = self._find(deployment.name)
        if pod is None:
            return None
        return (
            f"the RunPod console: Pods, pod {pod['id']}, Logs (https://www.runpod.io/console/pods)"
        )

    def explain_failure(self, deployment: Deployment) -> Exception:
        return CapacityError(
            f"{deployment.name}: the pod ended in ERROR on RunPod",
            hint="look at the pod's logs in the RunPod console, then 'ondemand delete' and "
            "'ondemand up' to deploy a new one",
        )

    # -- building the pod ---------------------------------------------------------------------

    def pod_spec(self, spec: Spec) -> dict[str, Any]:
        """The body of POST /v2/pods for ``spec``."""
        runpod = self.config.runpod
        port = str(spec.port)
        env = {**spec.env, **spec.secret_env, "PORT": port, "OLLAMA_MODELS": MODELS_DIR}
        env.update(label_env(spec.name))
        body: dict[str, Any] = {
            "name": spec.name,
            "image": check_image(spec.image),
            "gpu": {"id": pod_gpu_type(spec.gpu, self.runpod.catalog), "count": spec.gpu_count},
            "cloud": runpod.cloud_type,
            "disk": runpod.container_disk,
            "ports": [f"{port}/http"],
            "env": env,
        }
        if runpod.network_volume:
            volume = self.runpod.network_volume(runpod.network_volume, runpod.network_volume_size)
            body["mounts"] = {"network": [{"volumeId": str(volume["id"]), "path": MOUNT}]}
            body["dataCenterIds"] = [str(volume["dataCenter"])]
        else:
            if runpod.pod_volume:
                body["mounts"] = {"persistent": {"size": runpod.pod_volume, "path": MOUNT}}
            if runpod.data_centers:
                body["dataCenterIds"] = [dc.strip().upper() for dc in runpod.data_centers]
                self.runpod.check_data_centers(body["dataCenterIds"])
        env[ENV_SPEC] = digest({k: v for k, v in body.items()})
        env.update(run_label_env(self.env))
        return body
