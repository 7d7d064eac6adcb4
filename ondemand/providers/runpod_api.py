"""RunPod's REST v2 API (``https://api.runpod.io/v2``): the calls both RunPod providers
make, their error bodies, and the errors a user can act on.

Errors come as problem+json ``{title, status, detail, errors?}``; older answers and the
data planes use ``{"message"}`` or ``{"error"}``; all are read. Mutations are never
retried blindly: a create that failed with a 5xx may have created the resource, so the
providers look it up by name before trying again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ondemand.errors import CapacityError, ConfigError, CredentialsError, ProviderError
from ondemand.providers._http import ApiClient, ApiError, ApiUnreachable
from ondemand.providers.base import (
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_REPO,
    LABEL_RUN_ID,
    MANAGED_BY,
    label_value,
)
from ondemand.providers.runpod_catalog import Catalog
from ondemand.providers.runpod_spec import parse_network_volume

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig, RunpodSection

T = TypeVar("T")
log = logging.getLogger("ondemand.providers.runpod")

API_URL = "https://api.runpod.io"
POD_PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"
# Labels travel as environment variables: v2 endpoints and pods have no labels of their own.
ENV_MANAGED_BY = "ONDEMAND_LABEL_MANAGED_BY"
ENV_NAME = "ONDEMAND_LABEL_NAME"
ENV_SPEC = "ONDEMAND_LABEL_SPEC"
ENV_REPO = "ONDEMAND_LABEL_REPO"
ENV_RUN_ID = "ONDEMAND_LABEL_RUN_ID"
# RunPod's list price for network volume storage under 1 TB, USD per GB per month.
NETWORK_VOLUME_MONTHLY_PER_GB = 0.07


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if not isinstance(body, dict):
        return response.text.strip()[:300]
    text = next(
        (str(body[k]) for k in ("detail", "message", "error", "title") if body.get(k)),
        response.reason_phrase,
    )
    details = body.get("errors")
    if isinstance(details, list) and details:
        text += " (" + "; ".join(str(d) for d in details[:5]) + ")"
    return text


def network_volume_note(runpod: RunpodSection) -> str:
    """The network volume holding the models: it bills whether or not a worker or pod
    runs, and outlives a delete. Empty when none is configured."""
    volume = runpod.network_volume
    if not volume:
        return ""
    size = runpod.network_volume_size
    return (
        f"the network volume {volume} ({size} GB) keeps the model cache and bills about "
        f"${size * NETWORK_VOLUME_MONTHLY_PER_GB:.2f}/month until you delete it in RunPod's "
        "console"
    )


def label_env(name: str) -> dict[str, str]:
    return {ENV_MANAGED_BY: MANAGED_BY, ENV_NAME: label_value(name)}


def run_label_env(env: Mapping[str, str]) -> dict[str, str]:
    """The repository and the workflow run that created or last changed it, where known.
    Left out of the spec's digest: a new run alone changes nothing on RunPod."""
    found = {ENV_REPO: env.get("GITHUB_REPOSITORY", ""), ENV_RUN_ID: env.get("GITHUB_RUN_ID", "")}
    return {k: label_value(v) for k, v in found.items() if v.strip()}


class RunpodApi:
    """The REST v2 calls, with failures turned into ondemand's errors."""

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig) -> None:
        secret = config.secrets.runpod_api_key
        key = secret.get_secret_value() if secret else ""
        if not key:
            raise CredentialsError(
                "RUNPOD_API_KEY is not set",
                cause="the RunPod providers manage endpoints and pods with an API key",
                hint="create a key with read/write access in the RunPod console (Settings → "
                "API Keys) and pass it as RUNPOD_API_KEY; in a workflow, store it as a repository "
                "secret and give it to the action's runpod-api-key input "
                "(runpod-api-key: ${{ secrets.RUNPOD_API_KEY }})",
            )
        self.key = key
        timeout = config.config.timeout.total_seconds()
        base = env.get("RUNPOD_API_URL", "").strip().rstrip("/").removesuffix("/v2") or API_URL
        self.pod_proxy = env.get("RUNPOD_POD_PROXY_URL", "").strip() or POD_PROXY_URL
        self.api = ApiClient(
            base,
            key,
            error_message=error_message,
            retry_budget=min(120.0, timeout),
            deadline=time.monotonic() + timeout,
        )
        # A catalog that does not answer at once checks nothing: no retries for it.
        self.catalog = Catalog(
            lambda what, path: self.call(
                what, lambda: self.api.request("GET", path, retry=False).json()
            )
        )

    def check_data_centers(self, ids: list[str], *, volumes: bool = False) -> None:
        """Warn about data centers RunPod's catalog does not list (or not with volumes)."""
        kind = "data center offering network volumes" if volumes else "data center"
        self.catalog.check(kind, ids, lambda: self.catalog.data_center_ids(volumes=volumes))

    def close(self) -> None:
        self.api.close()

    def network_volume(self, text: str, size: int) -> dict[str, Any]:
        """The volume ``NAME@DC``, created with ``size`` GB if missing."""
        wanted = parse_network_volume(text)

        def named() -> list[dict[str, Any]]:
            body = self.get("list network volumes", "/v2/network-volumes")
            items = body.get("networkVolumes", []) if isinstance(body, dict) else []
            return [
                dict(item)
                for item in items
                if item.get("name") == wanted.name and item.get("dataCenter") == wanted.data_center
            ]

        found = oldest(named())
        if found is not None:
            return found
        self.check_data_centers([wanted.data_center], volumes=True)
        try:
            created, _ = self.create(
                "network volume",
                "/v2/network-volumes",
                {
                    "name": wanted.name,
                    "size": size,
                    "dataCenter": wanted.data_center,
                },
                named,
            )
        except ConfigError as exc:
            exc.hint = (
                "not every data center offers network volumes: pick one the message lists, "
                "or one RunPod's catalog shows with network volumes (GET "
                "/v2/catalog/datacenters?networkVolumeTypes=STANDARD) "
                "(runpod.network_volume: NAME@DATACENTER)"
            )
            raise
        log.info("created network volume %s in %s", wanted.name, wanted.data_center)
        return created

    # -- calls --------------------------------------------------------------------------

    def get(self, what: str, path: str) -> Any:
        return self.call(what, lambda: self.api.request("GET", path).json())

    def get_or_none(self, what: str, path: str) -> Any:
        try:
            return self.api.request("GET", path).json()
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self.error(what, exc) from exc
        except ApiUnreachable as exc:
            raise self.unreachable(what, exc) from exc

    def send(self, what: str, method: str, path: str, body: object = None) -> Any:
        """A mutation: retried on 429 and 5xx only where repeating it is harmless (PATCH to
        the same values, DELETE, an action), never for a create (see ``create``)."""

        def run() -> Any:
            response = self.api.request(method, path, json=body)
            return response.json() if response.content else None

        return self.call(what, run)

    def create(
        self,
        noun: str,
        path: str,
        body: object,
        named: Callable[[], list[dict[str, Any]]],
        *,
        looked: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """POST a new ``noun`` to ``path``; after a 5xx or a lost answer, look for it before
        retrying.

        Two jobs that create the same resource at once both succeed at RunPod: the oldest
        one is kept, and each racer that created a younger one deletes its own (just made,
        so nothing is lost). Answers the one kept, and whether this call made it (the loser
        must not stop the winner's)."""
        retrying = self.api.retrying()
        # The caller has just looked (``looked``): only a retry needs to look again.
        tries = 0

        def attempt() -> dict[str, Any]:
            nonlocal tries
            tries += 1
            found = oldest(named()) if tries > 1 or not looked else None
            if found is not None:
                return found
            made: dict[str, Any] = self.api.request("POST", path, json=body, retry=False).json()
            return made

        created: dict[str, Any] = self.call(f"create the {noun}", lambda: retrying(attempt))
        keep = oldest(named())
        if keep is None or keep.get("id") == created.get("id"):
            return created, True
        log.info("%s was created twice at once; keeping the older one", created.get("name"))
        self.send(f"delete the duplicate {noun}", "DELETE", f"{path}/{created['id']}")
        return keep, False

    def call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiError as exc:
            raise self.error(what, exc) from exc
        except ApiUnreachable as exc:
            raise self.unreachable(what, exc) from exc

    def unreachable(self, what: str, exc: Exception) -> CapacityError:
        return CapacityError(
            f"the RunPod API at {self.api.base_url} could not be reached ({what}): {exc}",
            hint="check the network (and RUNPOD_API_URL if set); retried until the command's "
            "time budget ran out",
        )

    def error(self, what: str, exc: ApiError) -> Exception:
        text = f"RunPod refused to {what}: {exc.message} (HTTP {exc.status})"
        if exc.status == 401:
            return CredentialsError(
                text,
                cause="RUNPOD_API_KEY is wrong, expired or deleted",
                hint="check RUNPOD_API_KEY; the RunPod console lists your keys (Settings → "
                "API Keys)",
            )
        if exc.status == 402:
            return ProviderError(
                text,
                cause="the RunPod account's balance is too low to start this",
                hint="add funds (RunPod console → Billing) or set up auto-pay, then run the "
                "command again",
            )
        if exc.status == 403 and what.startswith("create"):
            return CredentialsError(
                text,
                cause="the key or the account may not use this GPU pool, GPU type or cloud "
                "(some pools and Secure Cloud types need access granted to the account)",
                hint="pick another GPU (gpu:, runpod.gpu_pools) or cloud (runpod.cloud_type), "
                "or ask RunPod for access to this one",
            )
        if exc.status == 403:
            return CredentialsError(
                text,
                cause="the key is valid but lacks access (a read-only or restricted key)",
                hint="use a key with read/write access to Serverless, Pods and Network Volumes",
            )
        if exc.status == 422:
            return ProviderError(
                text,
                cause="RunPod rejected a field ondemand sent: the API changed, or this is a "
                "bug in ondemand",
                hint="report it with the message above; 'ondemand --debug' shows the request",
            )
        if exc.status == 429 or exc.status >= 500:
            return CapacityError(text, hint="RunPod is busy or failing; try again in a while")
        if exc.status == 400 and unplaced(exc.message):
            return CapacityError(
                text,
                cause="RunPod has no machine free for this GPU and data-center combination",
                hint="try again later, allow another GPU (gpu:) or more data centers "
                "(runpod.data_centers), or a network volume in another data center",
            )
        if exc.status == 400:
            return ConfigError(text, hint="fix the setting the message names (docs/runpod.md)")
        return ProviderError(text)


# A 400 to a create that could not be placed, rather than a field RunPod rejected. RunPod
# words it "There are no longer any instances available with the requested specifications"
# (its pod-create answer since the GraphQL API); the other words cover rewordings.
_UNPLACED_WORDS = (
    "no longer any instances",
    "instances available",
    "not enough capacity",
    "no capacity",
    "could not be placed",
    "could not find any",
)


def unplaced(message: str) -> bool:
    text = message.lower()
    return any(words in text for words in _UNPLACED_WORDS)


def managed(item: Mapping[str, Any], name: str | None = None) -> bool:
    """Whether an endpoint or pod is ours (and is deployment ``name``, when given).

    Found by our own labels, never by the resource's name: RunPod has appended " -fb" to the
    names of flashbooted endpoints (its own tooling strips it), and a name may be edited in
    the console; the label in the env stays as we set it."""
    env = item.get("env") or {}
    if not isinstance(env, dict) or env.get(ENV_MANAGED_BY) != MANAGED_BY:
        return False
    return name is None or env.get(ENV_NAME) == label_value(name)


def deployment_name(item: Mapping[str, Any]) -> str:
    """The deployment a managed resource stands for: its name label, else its own name
    without a FlashBoot suffix."""
    env = item.get("env") or {}
    label = env.get(ENV_NAME) if isinstance(env, dict) else None
    return str(label or str(item.get("name") or "").removesuffix(" -fb"))


def oldest(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one of several same-named resources that every racer agrees on."""
    return min(items, key=lambda i: (str(i.get("createdAt") or ""), str(i.get("id") or "")),
               default=None)  # fmt: skip


def the_one_named(found: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    """The endpoint or pod a name stands for, whoever asks (see ``RunpodApi.create``)."""
    if len(found) > 1:
        log.warning("%d RunPod %s are named %s; using the oldest", len(found), kind, name)
    return oldest(found)


def labels(item: Mapping[str, Any]) -> dict[str, str]:
    env = item.get("env") or {}
    found = {LABEL_MANAGED_BY: str(env.get(ENV_MANAGED_BY) or "")}
    for label, variable in ((LABEL_NAME, ENV_NAME), (LABEL_REPO, ENV_REPO),
                            (LABEL_RUN_ID, ENV_RUN_ID)):  # fmt: skip
        if env.get(variable):
            found[label] = str(env[variable])
    return {k: v for k, v in found.items() if v}
