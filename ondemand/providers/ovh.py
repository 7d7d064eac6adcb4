"""OVHcloud AI Deploy: the server image as an AI Deploy app, through the regional AI API.

``OvhClient`` mirrors the API (``/v1/app``, bearer AI token, ``{"message"}`` errors);
``OvhProvider`` holds the semantics: one app per deployment name, found by its labels,
updated in place when its spec changed and recreated only when OVH cannot update it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from ondemand.errors import CapacityError, ConfigError, CredentialsError, ProviderError
from ondemand.providers._http import ApiClient, ApiError, ApiUnreachable
from ondemand.providers.base import (
    CREATED_BY_ANOTHER,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    CacheSync,
    Deployment,
    Provider,
    Spec,
    Status,
    env_changes,
    label_value,
    map_status,
    parse_time,
)
from ondemand.providers.ovh_spec import (
    check_image,
    digest,
    flavor_for,
    needs_recreate,
    parse_volume,
    update_body,
)
from ondemand.providers.ovh_sync import as_cache_sync, cache_volume_id, last_push, push_body

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig

log = logging.getLogger("ondemand.providers.ovh")

REGIONS = {
    "GRA": "https://gra.ai.cloud.ovh.net",
    "BHS": "https://bhs.ai.cloud.ovh.net",
    "US-EAST-VA": "https://us-east-va.ai.cloud.ovh.us",
}
DEFAULT_REGION = "GRA"
STATES = {
    "QUEUED": Status.PENDING,
    "INITIALIZING": Status.STARTING,
    "SCALING": Status.STARTING,
    "RUNNING": Status.RUNNING,
    "STOPPING": Status.STOPPING,
    "STOPPED": Status.STOPPED,
    "FAILED": Status.FAILED,
    "ERROR": Status.FAILED,
    "DELETING": Status.DELETING,
    "DELETED": Status.ABSENT,
}
ACTIVE = frozenset({"QUEUED", "INITIALIZING", "SCALING", "RUNNING"})
# How long an app may take to pass its readiness probe before OVH marks it FAILED: time for
# the first pull of large models into an empty cache (the platform's default is 600 s).
PROGRESS_DEADLINE_SECONDS = 3 * 3600
LABEL_SPEC = "ondemand-spec"
_CAPACITY_WORDS = ("quota", "capacity", "no gpu", "not available", "unavailable", "insufficient")


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.text.strip()[:300]


class OvhClient:
    """The AI API's app routes, nothing more."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def create_app(self, body: Mapping[str, object]) -> dict[str, Any]:
        app: dict[str, Any] = self.api.request("POST", "/v1/app", json=body, retry=False).json()
        return app

    def list_apps(self, label_selector: str) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            params = {"labelSelector": label_selector, "page": page, "size": 100}
            body = self.api.request("GET", "/v1/app", params=params).json()
            # The AI API answers {items, metadata}; the OVH API a bare list: accept both.
            items = body.get("items", []) if isinstance(body, dict) else body
            yield from (item for item in items if isinstance(item, dict))
            meta = body.get("metadata", {}) if isinstance(body, dict) else {}
            if not items or page >= int(meta.get("pageCount") or 1):
                return
            page += 1

    def get_app(self, app_id: str) -> dict[str, Any] | None:
        try:
            app: dict[str, Any] = self.api.request("GET", f"/v1/app/{app_id}").json()
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return app

    def update_app(self, app_id: str, body: Mapping[str, object]) -> None:
        self.api.request("PUT", f"/v1/app/{app_id}", json=body)

    def set_label(self, app_id: str, name: str, value: str) -> None:
        self.api.request("PUT", f"/v1/app/{app_id}/label", json={"name": name, "value": value})

    def set_scaling(self, app_id: str, strategy: Mapping[str, object]) -> None:
        self.api.request("PUT", f"/v1/app/{app_id}/scalingstrategy", json=strategy)

    def start_app(self, app_id: str) -> None:
        self.api.request("PUT", f"/v1/app/{app_id}/start")

    def stop_app(self, app_id: str) -> None:
        self.api.request("PUT", f"/v1/app/{app_id}/stop")

    def delete_app(self, app_id: str, *, force: bool) -> None:
        self.api.request("DELETE", f"/v1/app/{app_id}", params={"force": str(force).lower()})

    def create_datasync(self, app_id: str, body: Mapping[str, object]) -> dict[str, Any]:
        # Not retried: a lost answer may have queued a sync, and a second is only waste.
        sync: dict[str, Any] = self.api.request(
            "POST", f"/v1/app/{app_id}/datasync", json=body, retry=False
        ).json()
        return sync


class OvhProvider(Provider):
    """AI Deploy apps; deployment ids are the deployment names (one app per name)."""

    name: ClassVar[str] = "ovh"

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig) -> None:
        super().__init__(env=env, config=config)
        self.resolved = config
        self.config = config.config
        token = config.secrets.ovh_token
        base = self._base_url(env)
        self.client = OvhClient(
            ApiClient(
                base,
                self._token(token.get_secret_value() if token else None),
                error_message=_message,
                retry_budget=min(120.0, config.config.timeout.total_seconds()),
                deadline=time.monotonic() + config.config.timeout.total_seconds(),
            )
        )

    def close(self) -> None:
        self.client.api.close()

    # -- settings ----------------------------------------------------------------------

    def _token(self, token: str | None) -> str:
        if not token:
            raise CredentialsError(
                "OVH_AI_TOKEN is not set",
                cause="the ovh provider manages apps through the AI API with an AI token",
                hint="create an operator token ('ovhai token create ondemand --role operator' or "
                "the Control Panel) and pass it as OVH_AI_TOKEN; in a workflow, store it as a "
                "repository secret and give it to the action's ovh-token input "
                "(ovh-token: ${{ secrets.OVH_AI_TOKEN }})",
            )
        return token

    def _base_url(self, env: Mapping[str, str]) -> str:
        override = env.get("OVH_AI_API_URL", "").strip()
        if override:
            return override.rstrip("/").removesuffix("/v1")
        region = (self.config.region or DEFAULT_REGION).strip().upper()
        if region not in REGIONS:
            raise ConfigError(
                f"unknown OVH region {self.config.region!r}",
                hint="use one of " + ", ".join(REGIONS) + " (OVH_REGION), or set "
                "OVH_AI_API_URL to the AI API of another region",
            )
        return REGIONS[region]

    def _image(self, spec: Spec) -> str:
        return check_image(spec.image)

    # -- reading apps -----------------------------------------------------------------

    def _api(self) -> ApiClient:
        return self.client.api

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an API call, turning its failure into the error a user can act on."""
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            raise self._error(what, exc) from exc
        except ApiUnreachable as exc:
            raise self._call_unreachable(what, exc) from exc

    def _call_unreachable(self, what: str, exc: ApiUnreachable) -> Exception:
        return CapacityError(
            f"the OVH AI API at {self._api().base_url} could not be reached ({what}): {exc}",
            hint="check OVH_REGION / OVH_AI_API_URL and the network; retried until the "
            "command's time budget ran out",
        )

    def _error(self, what: str, exc: ApiError) -> Exception:
        text = f"OVH AI API refused to {what}: {exc.message} (HTTP {exc.status})"
        if exc.status == 401:
            return CredentialsError(
                text,
                cause="the AI token is wrong, was deleted, or belongs to another region",
                hint="check OVH_AI_TOKEN; 'ovhai token list' shows your tokens",
            )
        if exc.status == 403:
            return CredentialsError(
                text,
                cause="the token may only read, or its label selector does not cover this app",
                hint="use a token with the operator role and no label selector (or one matching "
                f"{LABEL_MANAGED_BY}={MANAGED_BY})",
            )
        if exc.status == 402:
            return CapacityError(text, hint="check the Public Cloud project's billing and quotas")
        if exc.status in (429,) or exc.status >= 500:
            return CapacityError(text, hint="OVH is busy or failing; try again in a few minutes")
        return ProviderError(text)

    def _named_apps(self, name: str) -> list[dict[str, Any]]:
        selector = f"{LABEL_NAME}={label_value(name)}"
        return [
            app
            for app in self._call("list apps", lambda: list(self.client.list_apps(selector)))
            if (app.get("spec") or {}).get("name") == name
            and _state(app) not in ("DELETED", "DELETING")
        ]

    def _find_app(self, name: str) -> dict[str, Any] | None:
        apps = self._named_apps(name)
        if len(apps) > 1:
            # The one every racer agrees on (see _settle), whoever asks.
            log.warning("%d OVH apps are named %s; using the oldest", len(apps), name)
            apps.sort(key=_age_key)
        return apps[0] if apps else None

    def _deployment(
        self, name: str, app: dict[str, Any] | None, detail: str | None = None
    ) -> Deployment:
        if app is None:
            return Deployment(id=name, name=name, status=Status.ABSENT)
        status = app.get("status") or {}
        state = _state(app)
        info = status.get("info") or {}
        replicas = int(status.get("availableReplicas") or 0)
        return Deployment(
            id=name,
            name=name,
            status=map_status(STATES, state),
            vendor_state=state,
            url=status.get("url"),
            labels=(app.get("spec") or {}).get("labels") or {},
            created_at=parse_time(app.get("createdAt")),
            running_since=_running_since(status),
            # On the way up or down, OVH's message says why it waits or failed; once it runs,
            # it only repeats the state ("App is running").
            detail=detail or (None if state == "RUNNING" else info.get("message")),
            image=(app.get("spec") or {}).get("image"),
            replicas=replicas if state == "RUNNING" and replicas > 1 else None,
        )

    # -- the Provider contract ----------------------------------------------------------

    def find(self, name: str) -> Deployment | None:
        app = self._find_app(name)
        return None if app is None else self._deployment(name, app)

    def list_managed(self) -> list[Deployment]:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        apps = self._call("list apps", lambda: list(self.client.list_apps(selector)))
        return [
            self._deployment(str((app.get("spec") or {}).get("name") or app.get("id")), app)
            for app in apps
            if _state(app) not in ("DELETED", "DELETING")
        ]

    def status(self, deployment_id: str) -> Deployment:
        return self._deployment(deployment_id, self._find_app(deployment_id))

    def deploy(self, spec: Spec) -> Deployment:
        body = self.app_spec(spec)
        spec_digest = digest(body)
        body["labels"] = {**body["labels"], LABEL_SPEC: spec_digest}  # type: ignore[dict-item]
        app = self._find_app(spec.name)
        if app is None:
            return self._created(spec.name, body, "created")
        app_id = str(app["id"])
        labels = (app.get("spec") or {}).get("labels") or {}
        if labels.get(LABEL_SPEC) == spec_digest:
            return self._deployment(spec.name, app, "unchanged")
        if needs_recreate(app.get("spec") or {}, body):
            return self._recreate(
                spec.name,
                app,
                body,
                "the cache volume, probe or access mode changed, which OVH cannot update in place",
            )
        try:
            self._update(app_id, app.get("spec") or {}, body)
        except ProviderError as exc:
            # Refused (a field this API does not update in place): what an update cannot
            # do, a new app can; the bucket keeps the model cache.
            if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status != 400:
                raise
            log.info("the update was refused (%s); recreating the app", exc)
            refused = exc.__cause__.message
            return self._recreate(spec.name, app, body, f"OVH refused the update ({refused})")
        note = "updated; it takes effect at the next start" if _state(app) in ACTIVE else "updated"
        return self._deployment(
            spec.name, self._call("read the app", self.client.get_app, app_id), note
        )

    def _recreate(
        self, name: str, app: Mapping[str, Any], body: Mapping[str, object], why: str
    ) -> Deployment:
        """Delete the app and create it from ``body``: its volumes are buckets, which
        outlive it. Only a stopped app: deleting a running one would cut off its users."""
        if _state(app) in ACTIVE or _state(app) == "STOPPING":
            raise ProviderError(
                f"{name}: {why} changed, which OVH cannot update in place, and the app is running",
                hint="run 'ondemand down' (or stop) first; the app is then recreated, and "
                "the bucket keeps the model cache",
            )
        self._call("delete the old app", self.client.delete_app, app["id"], force=False)
        return self._created(name, body, "recreated")

    def start(self, deployment_id: str) -> Deployment:
        app = self._find_app(deployment_id)
        if app is None:
            return self._deployment(deployment_id, None)
        state = _state(app)
        if state in ACTIVE:
            return self._deployment(deployment_id, app, f"already {state}")
        if state == "STOPPING":
            raise ProviderError(
                f"{deployment_id} is still stopping", hint="wait for STOPPED, then start it"
            )
        if state == "ERROR":
            # A platform-side failure: OVH's troubleshooting guide says to redeploy, and the
            # API documents start only for a stopped app.
            raise ProviderError(
                f"{deployment_id} is in ERROR on OVH (a failure on OVH's side): it cannot be "
                "started again",
                hint="redeploy it: 'ondemand delete' then 'ondemand up' (the bucket keeps the "
                "model cache); if it happens again, try another region or contact OVH support",
            )
        try:
            self.client.start_app(app["id"])
        except ApiError as exc:
            if state == "FAILED" and exc.status == 400:
                # Start is documented for a stopped app; a FAILED one is tried, as OVH's CLI
                # users do, and where the API refuses, the way out is a new app.
                raise ProviderError(
                    f"OVH refused to start {deployment_id}, which FAILED: {exc.message}",
                    hint="fix what failed (see 'ovhai app logs'), then 'ondemand delete' and "
                    "'ondemand up' to create it again",
                ) from exc
            raise self._error("start the app", exc) from exc
        except ApiUnreachable as exc:
            raise self._call_unreachable("start the app", exc) from exc
        return self.status(deployment_id)

    def kept_after_delete(self) -> str:
        return self.stopped_note()

    def stopped_note(self) -> str:
        """What still bills once the app is stopped (the bucket holding the models, which
        also outlives a delete); empty when nothing does."""
        volume = self.config.volume
        if not volume:
            return ""
        bucket = volume.split("@", 1)[0]
        gigabytes = _cache_gigabytes(self.config.models)
        return (
            f"the Object Storage bucket {bucket} keeps the model cache and bills per GB "
            f"stored until you empty it (about {gigabytes:.0f} GB for these models: "
            f"~{gigabytes * OBJECT_STORAGE_MONTHLY_PER_GB:.2f} EUR/month at "
            f"{OBJECT_STORAGE_MONTHLY_PER_GB} EUR/GB/month)"
        )

    def stop(self, deployment_id: str) -> Deployment:
        app = self._find_app(deployment_id)
        if app is None or _state(app) not in ACTIVE:
            return self._deployment(deployment_id, app)
        self._call("stop the app", self.client.stop_app, app["id"])
        return self.status(deployment_id)

    def delete(self, deployment_id: str) -> None:
        app = self._find_app(deployment_id)
        if app is None:
            return
        force = _state(app) in ACTIVE or _state(app) == "STOPPING"
        self._call("delete the app", self.client.delete_app, app["id"], force=force)

    def save_model_cache(self, deployment_id: str) -> CacheSync | None:
        """Push the model store's volume to its bucket (docs/ovh.md, "The model cache"):
        OVH copies the bucket in at each start but never copies the volume back."""
        volume = self.config.volume
        app = self._find_app(deployment_id)
        if not volume or app is None or _state(app) != "RUNNING":
            return None
        if parse_volume(volume).permission == "RO":
            return None  # read-only: OVH never syncs it back, and it cannot hold new pulls
        body = push_body(cache_volume_id(app, volume))
        sync = self._call("push the model cache", self.client.create_datasync, app["id"], body)
        return as_cache_sync(sync, volume)

    def model_cache_sync(self, deployment_id: str) -> CacheSync | None:
        volume = self.config.volume
        app = self._find_app(deployment_id) if volume else None
        pushed = last_push(app) if app is not None else None
        return as_cache_sync(pushed, volume) if pushed is not None and volume else None

    def deployed_env(self, deployment_id: str) -> dict[str, str]:
        app = self._find_app(deployment_id)
        entries = ((app or {}).get("spec") or {}).get("envVars") or []
        return {str(e.get("name")): str(e["value"]) for e in entries if e.get("value")}

    def log_hint(self, deployment: Deployment) -> str | None:
        app = self._find_app(deployment.name)
        if app is None:
            return None
        return f"'ovhai app logs {app['id']}', or GET {self._api().base_url}/v1/app/{app['id']}/log"

    def spec_changes(self, spec: Spec) -> list[str]:
        app = self._find_app(spec.name)
        if app is None:
            return []
        have, want = app.get("spec") or {}, self.app_spec(spec)
        changes = []
        if have.get("image") != want["image"]:
            changes.append(f"image {have.get('image')} -> {want['image']}")
        had, wants = have.get("resources") or {}, want["resources"]
        gpu_had = f"{had.get('gpu')} x {had.get('flavor')}"
        gpu_wants = f"{wants['gpu']} x {wants['flavor']}" if isinstance(wants, dict) else ""
        if gpu_had != gpu_wants:
            changes.append(f"GPU {gpu_had} -> {gpu_wants}")
        env_wants = want["envVars"]
        changes += env_changes(
            {str(e.get("name")): str(e.get("value")) for e in have.get("envVars") or []},
            {str(e["name"]): str(e["value"]) for e in env_wants}
            if isinstance(env_wants, list)
            else {},
        )
        if needs_recreate(have, want):
            changes.append("the cache volume, health probe or access mode")
        return changes

    def explain_failure(self, deployment: Deployment) -> Exception:
        """The error to report when the app ended FAILED or ERROR."""
        message = deployment.detail or "no reason given"
        text = f"{deployment.name} ended {deployment.vendor_state} on OVH: {message}"
        if deployment.vendor_state == "ERROR" or any(w in message.lower() for w in _CAPACITY_WORDS):
            return CapacityError(
                text, hint="try another region or GPU model, or again later ('ondemand start')"
            )
        return ProviderError(
            text,
            cause="FAILED is the app's side: an image that cannot be pulled or is not "
            "linux/amd64, a private registry OVH cannot read, or a quota",
            hint="check the image and the app's logs ('ovhai app logs <id>'), then deploy again",
        )

    # -- building and changing apps -------------------------------------------------------

    def app_spec(self, spec: Spec) -> dict[str, object]:
        """The AppSpec for ``spec`` (the body of POST /v1/app)."""
        config = self.config
        env = {**spec.env, **spec.secret_env, "PORT": str(spec.port)}
        volumes: list[dict[str, object]] = []
        if spec.volume:
            volume = parse_volume(spec.volume)
            volumes.append(volume.to_api())
            env["OLLAMA_MODELS"] = volume.mount
        flavor = flavor_for(spec.gpu, config.ovh.flavor)
        labels = {k: label_value(v) for k, v in spec.labels.items()}
        labels[LABEL_MANAGED_BY] = MANAGED_BY
        labels[LABEL_NAME] = label_value(spec.name)
        return {
            "name": spec.name,
            "image": self._image(spec),
            "envVars": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "resources": {"flavor": flavor, "gpu": spec.gpu_count},
            "volumes": volumes,
            "defaultHttpPort": spec.port,
            # The proxy in the image authenticates every request itself (docs/ovh.md).
            "unsecureHttp": True,
            "labels": labels,
            # A readiness probe (the API's "App readiness probe"; a failure takes the app
            # out of service, it does not restart it): /ping answers 204 while models are
            # pulled, and OVH counts only a 200 as healthy, so the app stays SCALING until
            # they are warm. The deadline is raised from 600 s, or a long first pull would
            # end the app FAILED (docs/ovh.md, "Health check").
            "probe": {"path": "/ping", "port": spec.port},
            "deploymentStrategy": {"progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS},
            "scalingStrategy": self._scaling(),
        }

    def _scaling(self) -> dict[str, object]:
        ovh = self.config.ovh
        if ovh.replicas_min is not None and ovh.replicas_max is not None:
            return {
                "automatic": {
                    "replicasMin": ovh.replicas_min,
                    "replicasMax": ovh.replicas_max,
                    "resourceType": ovh.autoscale_resource,
                    "averageUsageTarget": ovh.autoscale_target,
                }
            }
        return {"fixed": {"replicas": ovh.replicas}}

    def _created(self, name: str, body: Mapping[str, object], detail: str) -> Deployment:
        app, ours = self._create(name, body)
        return self._deployment(name, app, detail if ours else CREATED_BY_ANOTHER)

    def _create(self, name: str, body: Mapping[str, object]) -> tuple[dict[str, Any], bool]:
        """POST /v1/app, retried safely: after a 5xx or a lost answer the app may exist."""
        retrying = self._api().retrying()

        def attempt() -> dict[str, Any]:
            existing = self._find_app(name)
            if existing is not None:
                return existing
            return self.client.create_app(body)

        try:
            app: dict[str, Any] = retrying(attempt)
        except ApiError as exc:
            raise self._error("create the app", exc) from exc
        except ApiUnreachable as exc:
            raise CapacityError(f"the OVH AI API could not be reached: {exc}") from exc
        return self._settle(name, app)

    def _settle(self, name: str, created: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Two jobs that create the same app at once both succeed at OVH: the oldest one is
        kept, and each racer that created a younger one deletes its own. Answers the app
        kept and whether this job made it."""
        apps = self._named_apps(name)
        if len(apps) < 2:
            return created, True
        oldest = min(apps, key=_age_key)
        if oldest.get("id") == created.get("id"):
            return created, True
        log.info("%s was created twice at once; keeping the older app", name)
        self._call("delete the duplicate app", self.client.delete_app, created["id"],
                   force=True)  # fmt: skip
        return oldest, False

    def _update(self, app_id: str, current: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """Send what changed, in the fields an update takes (``update_body``); the spec
        label goes last, so a refusal midway leaves the label of the spec the app runs."""
        update = update_body(current, body)
        if update:
            self._call("update the app", self.client.update_app, app_id, update)
        if current.get("scalingStrategy") != body["scalingStrategy"]:
            self._call(
                "change the scaling", self.client.set_scaling, app_id, body["scalingStrategy"]
            )
        have_labels = current.get("labels") or {}
        for name, value in body["labels"].items():
            if have_labels.get(name) != value:
                self._call("label the app", self.client.set_label, app_id, name, value)


class SandboxProvider(OvhProvider):
    """The built-in emulated cloud (``ondemand sandbox``), spoken to as OVH AI Deploy."""

    name: ClassVar[str] = "sandbox"
    DEFAULT_TOKEN = "sandbox-operator"
    DEFAULT_IMAGE = "ollama-ondemand:sandbox"

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig) -> None:
        token = env.get("OVH_AI_TOKEN") or env.get("ONDEMAND_SANDBOX_TOKEN") or self.DEFAULT_TOKEN
        secrets = config.secrets.model_copy(update={"ovh_token": _secret(token)})
        super().__init__(env=env, config=replace(config, secrets=secrets))

    def _base_url(self, env: Mapping[str, str]) -> str:
        url = env.get("ONDEMAND_SANDBOX_URL", "").strip().rstrip("/")
        if not url:
            raise ConfigError(
                "ONDEMAND_SANDBOX_URL is not set",
                cause="the sandbox provider talks to a running 'ondemand sandbox'",
                hint="start 'ondemand sandbox' (it prints ONDEMAND_SANDBOX_URL) and export it",
            )
        return url + "/ovh"

    def _image(self, spec: Spec) -> str:
        # Nothing is pulled in the sandbox: an image name is only recorded.
        return check_image(spec.image or self.DEFAULT_IMAGE)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


# Indicative list price of Standard Object Storage per GB per month; see your project's.
OBJECT_STORAGE_MONTHLY_PER_GB = 0.007
# A model's size by its tag when the cache cannot be measured: 4-bit weights.
_DEFAULT_MODEL_GB = 5.0


def _cache_gigabytes(models: Sequence[str]) -> float:
    """A rough size of the model cache: about 0.6 GB per billion parameters (q4), from the
    tag (``qwen3:8b``); 5 GB for a model whose tag names no size."""
    total = 0.0
    for model in models:
        size = re.search(r":(\d+(?:\.\d+)?)b\b", model.lower())
        total += float(size.group(1)) * 0.6 if size else _DEFAULT_MODEL_GB
    return max(total, 1.0)


def _age_key(app: Mapping[str, Any]) -> tuple[str, str]:
    return str(app.get("createdAt") or ""), str(app.get("id") or "")


def _state(app: Mapping[str, Any]) -> str:
    status = app.get("status") or {}
    state = status.get("state")
    if not state and status.get("history"):
        state = status["history"][-1].get("state")
    return str(state or "").upper()


def _running_since(status: Mapping[str, Any]) -> datetime | None:
    """When compute began to bill: the start of the last run of SCALING/RUNNING states."""
    since: datetime | None = None
    for entry in status.get("history") or []:
        billing = str(entry.get("state") or "").upper() in ("SCALING", "RUNNING")
        since = (since or parse_time(entry.get("date"))) if billing else None
    return since if _state({"status": status}) in ("SCALING", "RUNNING") else None
