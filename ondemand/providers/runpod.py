"""RunPod serverless: the server image as a load-balancing endpoint (REST v2).

Requests reach a worker's HTTP server (our proxy) through RunPod's gateway
``https://<id>.api.runpod.ai``; workers start on demand, up to ``workers.max``, and stop
after ``workers.idleTimeout``. There is no stop verb: stopped means ``workers.min = 0`` and
``workers.max = 0`` (sent explicitly), and verified by the workers summary reaching zero.
One endpoint per deployment name, found by name and our labels in its env.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from ondemand.errors import CapacityError, UnhealthyError
from ondemand.providers.base import (
    CREATED_BY_ANOTHER,
    Deployment,
    Provider,
    Spec,
    Status,
    parse_time,
)
from ondemand.providers.ovh_spec import check_image, digest
from ondemand.providers.runpod_api import (
    ENV_SPEC,
    RunpodApi,
    deployment_name,
    label_env,
    labels,
    managed,
    network_volume_note,
    run_label_env,
    the_one_named,
)
from ondemand.providers.runpod_spec import serverless_gpus

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig


VOLUME_MOUNT = "/runpod-volume"
MODELS_DIR = f"{VOLUME_MOUNT}/ollama-models"
# Polls that saw a crashed worker, none ready since, before 'up' calls it a crash loop.
CRASH_POLLS = 3
# RunPod marks a worker unhealthy when its start (image pull, start, model load) takes
# longer than 7 minutes, unless the endpoint's env sets RUNPOD_INIT_TIMEOUT (seconds)
# (runpod/docs serverless/development/optimization.mdx @fed16bc).
INIT_TIMEOUT_ENV = "RUNPOD_INIT_TIMEOUT"
DEFAULT_INIT_LIMIT = 420


def init_timeout(timeout: float) -> int:
    """The start limit for a configured ``timeout``: at least RunPod's own 7 minutes, and
    rounded up to 5 minutes, so that a slightly different ``--timeout`` of one run does not
    change the endpoint (and roll its workers)."""
    return max(DEFAULT_INIT_LIMIT, math.ceil(timeout / 300) * 300)


# Where later steps find the restricted key that passes the gateway (never the account key).
CLIENT_KEY_ENV = "RUNPOD_CLIENT_KEY"
# Seconds an endpoint read is used again within one command (deployed_env, log_hint, ...).
FRESH = 2.0
# Gaps between two reads of the API while a command polls a state (seconds).
POLL_FIRST, POLL_MAX = 0.5, 15.0


def _summary(workers: Mapping[str, Any] | None) -> dict[str, int]:
    raw = (workers or {}).get("summary") or {}
    keys = ("running", "idle", "initializing", "throttled", "unhealthy", "total")
    return {k: int(raw.get(k) or 0) for k in keys}


def describe(summary: Mapping[str, int]) -> str:
    shown = [f"{summary[k]} {k}" for k in ("running", "idle", "initializing", "throttled",
                                           "unhealthy") if summary.get(k)]  # fmt: skip
    return "workers: " + (", ".join(shown) if shown else "none")


class RunpodProvider(Provider):
    """Load-balancing serverless endpoints; deployment ids are the deployment names."""

    name: ClassVar[str] = "runpod"
    # Workers come and go: each stops idle_timeout after its last request, and a new one
    # starts with nothing of its predecessor's memory. A per-run key kept in one worker's
    # memory would stop working between two requests of the same job.
    ephemeral_servers: ClassVar[bool] = True

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig) -> None:
        super().__init__(env=env, config=config)
        self.resolved = config
        self.config = config.config
        self.runpod = RunpodApi(env=env, config=config)
        self.last_summary: dict[str, int] = {}
        self.oldest_worker: datetime | None = None
        self._crash_polls = 0
        self._ids: dict[str, str] = {}  # deployment name -> endpoint id, once known
        self._seen: dict[str, tuple[float, dict[str, Any] | None]] = {}  # name -> (when, what)
        self.clock = time.monotonic
        # Status polls read the API at growing gaps (see ``status``).
        self._poll_gap = POLL_FIRST
        self._polled: dict[str, tuple[float, Deployment]] = {}
        self._fresh_reads = 0  # workers summaries read (crash sightings count only these)
        self._counted_reads = 0
        # Since when no worker has been ready while some were starting, and the start limit
        # RunPod applies to each (the endpoint's RUNPOD_INIT_TIMEOUT, else 7 minutes).
        self._initializing_since: float | None = None
        self._init_limit = float(DEFAULT_INIT_LIMIT)

    def close(self) -> None:
        self.runpod.close()

    # -- reading -------------------------------------------------------------------------

    def _named(self, name: str) -> list[dict[str, Any]]:
        body = self.runpod.get("list endpoints", "/v2/serverless")
        items = body.get("endpoints", []) if isinstance(body, dict) else body or []
        return [e for e in items if isinstance(e, dict) and managed(e, name)]

    def _find(self, name: str, max_age: float = FRESH) -> dict[str, Any] | None:
        """The endpoint, by id once it is known (one GET instead of listing them all: the
        key's rate limit is shared by every job), else by our labels. An answer younger
        than ``max_age`` seconds (ours, or a PATCH's) is used again."""
        seen = self._seen.get(name)
        if seen is not None and self.clock() - seen[0] <= max_age:
            return seen[1]
        endpoint = self._fetch(name)
        self._seen[name] = (self.clock(), endpoint)
        return endpoint

    def _fetch(self, name: str) -> dict[str, Any] | None:
        known = self._ids.get(name)
        if known is not None:
            endpoint = self.runpod.get_or_none("read the endpoint", f"/v2/serverless/{known}")
            if isinstance(endpoint, dict) and managed(endpoint, name):
                return endpoint
            del self._ids[name]
        return self._remember(name, the_one_named(self._named(name), "endpoints", name))

    def _remember(self, name: str, endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
        if endpoint is not None and endpoint.get("id"):
            self._ids[name] = str(endpoint["id"])
        return endpoint

    def _workers(self, endpoint_id: str) -> dict[str, int]:
        workers = self.runpod.get_or_none(
            "read the workers", f"/v2/serverless/{endpoint_id}/workers"
        )
        self.last_summary = _summary(workers)
        self._fresh_reads += 1
        summary = self.last_summary
        if summary["running"] + summary["idle"]:
            self._initializing_since = None
        elif summary["initializing"] + summary["unhealthy"] and self._initializing_since is None:
            self._initializing_since = self.clock()
        uptimes = [
            float(w.get("uptimeSeconds") or 0)
            for w in (workers or {}).get("workers") or []
            if isinstance(w, dict)
        ]
        # Billing follows workers: the oldest running one is when this run began to cost.
        self.oldest_worker = (
            datetime.now(UTC) - timedelta(seconds=max(uptimes)) if any(uptimes) else None
        )
        return self.last_summary

    def _deployment(
        self,
        name: str,
        endpoint: Mapping[str, Any] | None,
        detail: str | None = None,
        *,
        summary: Mapping[str, Any] | None = None,
    ) -> Deployment:
        if endpoint is None:
            return Deployment(id=name, name=name, status=Status.ABSENT)
        limit = str((endpoint.get("env") or {}).get(INIT_TIMEOUT_ENV) or "")
        self._init_limit = float(limit) if limit.isdigit() else float(DEFAULT_INIT_LIMIT)
        if summary is None:
            summary = self._workers(str(endpoint["id"]))
        else:
            summary = self.last_summary = _summary({"summary": summary})
            self.oldest_worker = None
        limits = endpoint.get("workers") or {}
        allowed = int(limits.get("max") or 0) > 0
        if allowed:
            status, state = Status.RUNNING, "ENABLED"
        elif summary["total"] > 0:
            status, state = Status.STOPPING, "SCALING_DOWN"
        else:
            status, state = Status.STOPPED, "STOPPED"
        urls = endpoint.get("requestUrls") or {}
        return Deployment(
            id=name,
            name=name,
            status=status,
            vendor_state=state,
            url=str(urls.get("base") or "") or None,
            labels=labels(endpoint),
            created_at=parse_time(endpoint.get("createdAt")),
            running_since=self.oldest_worker,
            detail=detail or describe(summary),
            image=endpoint.get("image"),
        )

    # -- the Provider contract ---------------------------------------------------------------

    def find(self, name: str) -> Deployment | None:
        endpoint = self._find(name)
        return None if endpoint is None else self._deployment(name, endpoint)

    def list_managed(self) -> list[Deployment]:
        body = self.runpod.get("list endpoints", "/v2/serverless")
        items = body.get("endpoints", []) if isinstance(body, dict) else []
        return [
            self._deployment(deployment_name(e), e)
            for e in items
            if isinstance(e, dict) and managed(e)
        ]

    def status(self, deployment_id: str) -> Deployment:
        """Polled while waiting (for workers, for a stop): the API is read at gaps growing
        from POLL_FIRST to POLL_MAX seconds, the answer in between is the last one read. A
        change this provider makes starts the gaps again. One key's rate limit is shared by
        every job using it (RunPod's example policy: 60 requests a minute)."""
        now = self.clock()
        polled = self._polled.get(deployment_id)
        if polled is not None and now < polled[0]:
            return polled[1]
        deployment = self._deployment(deployment_id, self._find(deployment_id, max_age=0))
        self._polled[deployment_id] = (now + self._poll_gap, deployment)
        self._poll_gap = min(self._poll_gap * 2, POLL_MAX)
        return deployment

    def _changed(self, name: str, endpoint: dict[str, Any] | None) -> None:
        """After a change: the next status reads the API again, soon."""
        self._polled.pop(name, None)
        self._poll_gap = POLL_FIRST
        self._seen.pop(name, None)
        if endpoint is not None:
            self._seen[name] = (self.clock(), endpoint)

    def deploy(self, spec: Spec) -> Deployment:
        body = self.endpoint_spec(spec)
        current = self._find(spec.name)
        if current is None:
            # Created with no workers allowed: 'start' (or 'up') lets them run.
            body["workers"] = {**body["workers"], "min": 0, "max": 0}
            created, ours = self.runpod.create(
                "endpoint", "/v2/serverless", body, lambda: self._named(spec.name), looked=True
            )
            self._remember(spec.name, created)
            self._changed(spec.name, created)
            # Created with no worker allowed: none runs, none to read.
            summary: dict[str, int] | None = {} if ours else None
            detail = "created" if ours else CREATED_BY_ANOTHER
            return self._deployment(spec.name, created, detail, summary=summary)
        env = current.get("env") or {}
        if env.get(ENV_SPEC) == body["env"][ENV_SPEC]:
            return self._deployment(spec.name, current, "unchanged")
        update = {k: v for k, v in body.items() if k not in ("name", "type")}
        limits = current.get("workers") or {}
        # Keep the endpoint as started or stopped as it is; only the idle timeout changes.
        update["workers"] = {
            "min": int(limits.get("min") or 0),
            "max": int(limits.get("max") or 0),
            "idleTimeout": body["workers"]["idleTimeout"],
        }
        updated = self.runpod.send(
            "update the endpoint", "PATCH", f"/v2/serverless/{current['id']}", update
        )
        self._changed(spec.name, updated if isinstance(updated, dict) else None)
        note = "updated; running workers are replaced with the new version"
        note = note if limits.get("max") else "updated"
        return self._deployment(spec.name, updated or current, note)

    def start(self, deployment_id: str) -> Deployment:
        endpoint = self._find(deployment_id)
        if endpoint is None:
            return self._deployment(deployment_id, None)
        runpod = self.config.runpod
        limits = endpoint.get("workers") or {}
        wanted = {"min": runpod.workers_min, "max": runpod.workers_max}
        if (int(limits.get("min") or 0), int(limits.get("max") or 0)) == (
            wanted["min"],
            wanted["max"],
        ):
            return self._deployment(deployment_id, endpoint, "already allows workers")
        patched = self._set_workers(endpoint, wanted["min"], wanted["max"], "start the endpoint")
        self._changed(deployment_id, patched)
        started = self._deployment(deployment_id, patched or endpoint)
        allowed = f"workers allowed (min {wanted['min']}, max {wanted['max']})"
        return replace(started, detail=allowed)

    def stopped_note(self) -> str:
        """What still bills once no worker runs; empty when nothing does."""
        return network_volume_note(self.config.runpod)

    def kept_after_delete(self) -> str:
        return network_volume_note(self.config.runpod)

    def scale_to_zero(self, deployment_id: str) -> int:
        """A job's cleanup: no worker floor, so each worker stops ``idle_timeout`` after its
        last request (RunPod never stops one serving a request); the workers allowed stay,
        so a job still using the endpoint wakes one. Answers the idle timeout."""
        endpoint = self._find(deployment_id) or {}
        limits = endpoint.get("workers") or {}
        idle = int(limits.get("idleTimeout") or self.config.runpod.idle_timeout)
        if endpoint and int(limits.get("min") or 0):
            floor = self._set_workers(
                endpoint, 0, int(limits.get("max") or 0), "lower the worker floor"
            )
            self._changed(deployment_id, floor)
        return idle

    def stop(self, deployment_id: str) -> Deployment:
        endpoint = self._find(deployment_id)
        if endpoint is None:
            return self._deployment(deployment_id, None)
        limits = endpoint.get("workers") or {}
        if int(limits.get("min") or 0) or int(limits.get("max") or 0):
            patched = self._set_workers(endpoint, 0, 0, "stop the endpoint")
            self._changed(deployment_id, patched)
            endpoint = patched or endpoint
        return self._deployment(deployment_id, endpoint)

    def delete(self, deployment_id: str) -> None:
        endpoint = self._find(deployment_id)
        if endpoint is None:
            return
        limits = endpoint.get("workers") or {}
        if int(limits.get("min") or 0) or int(limits.get("max") or 0):
            # The GraphQL docs require zero workers before a delete; do it whatever REST says.
            self._set_workers(endpoint, 0, 0, "stop the endpoint")
        self.runpod.send("delete the endpoint", "DELETE", f"/v2/serverless/{endpoint['id']}")
        self._ids.pop(deployment_id, None)
        self._changed(deployment_id, None)

    def _set_workers(
        self, endpoint: Mapping[str, Any], low: int, high: int, what: str
    ) -> dict[str, Any] | None:
        """PATCH the worker bounds; answers the endpoint as updated (no second read)."""
        limits = endpoint.get("workers") or {}
        body = {"workers": {"min": low, "max": high, "idleTimeout": limits.get("idleTimeout")}}
        if body["workers"]["idleTimeout"] is None:
            body["workers"]["idleTimeout"] = self.config.runpod.idle_timeout
        patched = self.runpod.send(what, "PATCH", f"/v2/serverless/{endpoint['id']}", body)
        return patched if isinstance(patched, dict) and patched.get("id") else None

    # -- what the lifecycle asks of this provider -----------------------------------------------

    def deployed_env(self, deployment_id: str) -> dict[str, str]:
        endpoint = self._find(deployment_id)
        return {str(k): str(v) for k, v in ((endpoint or {}).get("env") or {}).items() if v}

    def log_hint(self, deployment: Deployment) -> str | None:
        endpoint = self._find(deployment.name)
        if endpoint is None:
            return None
        return (
            f"the RunPod console: Serverless, endpoint {endpoint['id']}, Logs "
            f"(https://www.runpod.io/console/serverless/user/endpoint/{endpoint['id']})"
        )

    def gateway_headers(self) -> dict[str, str]:
        """RunPod's gateway takes the account key in Authorization; ours goes in X-API-Key."""
        return {"Authorization": f"Bearer {self.runpod.key}"}

    def client_env(self) -> tuple[dict[str, str], str | None]:
        """The restricted client key, as ``RUNPOD_CLIENT_KEY``. The account key is never
        handed on: it can create, change and delete everything the account has."""
        client = self.resolved.secrets.runpod_client_key
        if client is not None and client.get_secret_value():
            return {CLIENT_KEY_ENV: client.get_secret_value()}, None
        return {}, (
            f"no RunPod client key ({CLIENT_KEY_ENV}, the action's runpod-client-key): "
            "clients must pass RunPod's gateway with a RunPod key, and the account key can "
            "change or delete everything in the account. Create a restricted key with access "
            "to this endpoint only and pass it as runpod-client-key (docs/runpod.md, "
            "'A key for the clients')"
        )

    def probe_would_wake(self, deployment: Deployment) -> bool:
        """Asking a scaled-to-zero endpoint for /ping starts a worker (and its bill)."""
        summary = self.last_summary
        idle = summary.get("running", 0) + summary.get("idle", 0) == 0
        return deployment.status is Status.RUNNING and idle

    def readiness_problem(self, deployment: Deployment, ping: int | None) -> Exception | None:
        summary = self.last_summary
        ready = ping == 200 or summary.get("running", 0) + summary.get("idle", 0) > 0
        # A crash-looping worker is unhealthy only between its restarts, so polls in
        # between see it initializing: count sightings until a worker is ready.
        fresh = self._fresh_reads != self._counted_reads
        self._counted_reads = self._fresh_reads
        if ready:
            self._crash_polls = 0
        elif summary.get("unhealthy", 0) > 0 and fresh:
            self._crash_polls += 1
        if self._crash_polls < CRASH_POLLS:
            return None
        starting = self._initializing_since
        if starting is not None and self.clock() - starting >= self._init_limit:
            # Not a crash: RunPod marks a worker unhealthy when its start outlasts the
            # start limit, and starts another, which pulls the model again. Unhealthy (9),
            # as RunPod calls them; a ReadyTimeoutError would read as our own deadline.
            return UnhealthyError(
                f"{deployment.name}: workers restart during a long first start: each was "
                f"still starting after RunPod's start limit ({self._init_limit:.0f}s, "
                f"RUNPOD_INIT_TIMEOUT) and was replaced ({describe(summary)})",
                cause="the first pull of a large model (image pull, start and model load "
                "count as the start) takes longer than the start limit",
                hint="raise timeout: (RUNPOD_INIT_TIMEOUT follows it on the next deploy), "
                "and keep the models on a network volume (runpod.network_volume) so only "
                "the first start pulls them",
            )
        return UnhealthyError(
            f"{deployment.name}: workers crash as they start ({describe(summary)})",
            cause="the server in the image exits: a bad setting in its environment, an image "
            "that is not linux/amd64, or a model that cannot be loaded",
            hint="read the worker logs (RunPod console → Serverless → the endpoint → Workers, "
            "or GET /v2/serverless/<id>/workers/<worker>/logs), fix, then 'ondemand up' again",
        )

    def explain_timeout(self, deployment: Deployment) -> Exception | None:
        summary = self.last_summary
        if summary.get("throttled", 0) and not summary.get("running", 0) + summary.get("idle", 0):
            return CapacityError(
                f"{deployment.name}: no worker could get a GPU ({describe(summary)})",
                cause="throttled workers are wanted but RunPod has no capacity for the GPU "
                "pools and data centers allowed",
                hint="allow more pools (runpod.gpu_pools), drop the data-center pin of the "
                "network volume, or try again later",
            )
        return None

    # -- building the endpoint ----------------------------------------------------------------

    def endpoint_spec(self, spec: Spec) -> dict[str, Any]:
        """The body of POST /v2/serverless for ``spec`` (workers as the config says)."""
        runpod = self.config.runpod
        image = check_image(spec.image)
        pools, excluded = serverless_gpus(
            spec.gpu, runpod.gpu_pools, runpod.exclude_gpu_types, self.runpod.catalog
        )
        port = str(spec.port)
        # Both set explicitly and the port exposed: otherwise the gateway never sees the
        # worker ready (the reference's §3.4).
        env = {**spec.env, **spec.secret_env, "PORT": port, "PORT_HEALTH": port}
        env[INIT_TIMEOUT_ENV] = str(init_timeout(self.config.timeout.total_seconds()))
        env.update(label_env(spec.name))
        volumes: list[str] = []
        data_centers = [dc.strip().upper() for dc in runpod.data_centers if dc.strip()]
        if data_centers and not runpod.network_volume:
            self.runpod.check_data_centers(data_centers)
        if runpod.network_volume:
            volume = self.runpod.network_volume(runpod.network_volume, runpod.network_volume_size)
            volumes.append(str(volume["id"]))
            # A volume pins its workers to its data center.
            data_centers = [str(volume["dataCenter"])] if volume.get("dataCenter") else []
            env["OLLAMA_MODELS"] = MODELS_DIR
        gpu: dict[str, Any] = {"pools": pools, "count": spec.gpu_count}
        if excluded:
            gpu["excludedTypes"] = excluded
        body: dict[str, Any] = {
            "name": spec.name,
            "type": "LOAD_BALANCER",
            "image": image,
            "env": env,
            "ports": [f"{port}/http"],
            "disk": runpod.container_disk,
            "gpu": gpu,
            "workers": {
                "min": runpod.workers_min,
                "max": runpod.workers_max,
                "idleTimeout": runpod.idle_timeout,
            },
            "scaling": {"type": "REQUEST_COUNT", "requestCount": runpod.request_count},
            "flashboot": "FLASHBOOT" if runpod.flashboot else "OFF",
            "networkVolumes": volumes,
            "dataCenterIds": data_centers,
        }
        # The digest leaves out what start and stop change.
        shape = {k: v for k, v in body.items() if k != "workers"}
        shape["workers"] = {"idleTimeout": runpod.idle_timeout}
        env[ENV_SPEC] = digest(shape)
        env.update(run_label_env(self.env))
        return body
