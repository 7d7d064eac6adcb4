"""The provider contract: what every cloud (and the local and sandbox stand-ins) must do.

A provider drives one vendor API. It holds no lifecycle policy (leases, idle decisions,
cost): that lives in ``lifecycle.py`` above it, the same for every provider.
"""

from __future__ import annotations

import abc
import enum
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ondemand.errors import ReadyTimeoutError
from ondemand.keys import RUN_KEY_EPOCH_ENV

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig

T = TypeVar("T")

# Every deployment carries these labels, so cleanup and the reaper can find it by label
# even when a cancelled job never wrote its outputs.
LABEL_MANAGED_BY = "managed-by"
LABEL_NAME = "ondemand-name"
LABEL_REPO = "repo"
LABEL_RUN_ID = "run-id"
LABEL_EXPIRES_AT = "expires-at"
MANAGED_BY = "ollama-ondemand"
# A deploy's detail when another job created the same deployment at the same moment and
# its copy was kept: this job must not stop it, since the other may be starting it.
CREATED_BY_ANOTHER = "created at the same moment by another job"


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(text: str) -> str:
    """A value that fits every vendor's labels: ``[A-Za-z0-9._-]``, at most 63 characters,
    starting and ending with a letter or digit (``org/repo`` becomes ``org.repo``)."""
    value = _LABEL_UNSAFE.sub("-", text.replace("/", ".")).strip("-._")
    return value[:63].rstrip("-._")


# What a running server takes without a restart (the model list: 'up' adds models through
# the server's admin API), or what changes on every start (the per-run keys' epoch).
LIVE_ENV = frozenset({"OLLAMA_PRELOAD_MODELS", RUN_KEY_EPOCH_ENV})


def env_changes(have: Mapping[str, str], want: Mapping[str, str]) -> list[str]:
    """The environment variables a redeploy would change, by name only (some are keys)."""
    names = sorted(
        k
        for k in {*have, *want}
        if k not in LIVE_ENV and (have.get(k) or "") != (want.get(k) or "")
    )
    return [f"environment {', '.join(names)}"] if names else []


def parse_time(value: object) -> datetime | None:
    """A vendor's RFC 3339 time (``Z`` or an offset), or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class Status(enum.Enum):
    """One lifecycle vocabulary over every vendor's states."""

    ABSENT = "absent"  # no such deployment
    PENDING = "pending"  # accepted, compute being allocated
    STARTING = "starting"  # compute allocated, server booting
    RUNNING = "running"  # the provider reports it running (readiness is /ping's to say)
    STOPPING = "stopping"
    STOPPED = "stopped"  # no compute billed
    FAILED = "failed"
    DELETING = "deleting"
    UNKNOWN = "unknown"  # a vendor state this version does not know

    @property
    def billable(self) -> bool:
        """Whether compute may be billed in this state; unknown counts as billing."""
        return self not in (Status.ABSENT, Status.STOPPED, Status.FAILED)


def map_status(table: Mapping[str, Status], vendor_state: str | None) -> Status:
    """Translate a vendor state through a provider's table; never raises on new states."""
    if vendor_state is None:
        return Status.UNKNOWN
    return table.get(vendor_state.strip().upper(), Status.UNKNOWN)


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What to deploy. ``secret_env`` values are sent to the provider but never shown."""

    name: str
    image: str
    models: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    gpu: str = "L4"
    gpu_count: int = 1
    cpu: int = 4
    memory: str = "16Gi"
    port: int = 8080
    region: str | None = None
    volume: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """What the provider reports about one deployment."""

    id: str
    name: str
    status: Status
    vendor_state: str | None = None
    url: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    running_since: datetime | None = None  # when it last began to bill compute
    detail: str | None = None  # the vendor's explanation, e.g. why it FAILED
    image: str | None = None  # the image it runs, so a stopped one can start from its own spec
    # Servers answering behind its URL when the platform runs several (replicas); None: one.
    replicas: int | None = None


@dataclass(frozen=True, kw_only=True)
class CacheSync:
    """A copy of the server's model store back to where its next start reads it from (a
    bucket the platform copies in at start and never writes back by itself)."""

    id: str
    state: str  # the vendor's word for it
    finished: bool
    succeeded: bool
    where: str  # what it copies to, for people (a bucket)
    queued_at: datetime | None = None
    ended_at: datetime | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "finished": self.finished,
            "succeeded": self.succeeded,
            "to": self.where,
            "queued_at": self.queued_at.isoformat() if self.queued_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "detail": self.detail,
        }


class Provider(abc.ABC):
    """A cloud that can run the server image.

    A provider is built as ``cls(env=<environment mapping>, config=<ResolvedConfig>)`` and
    reads its credentials from that environment, never from ``os.environ``.

    Contract, relied on by every caller and checked by the contract tests for each provider:

    - ``deploy(spec)`` is create-or-update: it finds an existing deployment by name (and the
      ``managed-by``/``ondemand-name`` labels) and never creates a duplicate. When the spec
      changed it updates in place; it recreates only when the vendor cannot update in place,
      and then keeps the model cache volume. It does not wait for the deployment to run.
    - ``start``/``stop`` ask the vendor for the change and return promptly with the state
      reported right after; they do not wait. ``stop`` of something already stopped, and
      ``stop``/``delete`` of something absent, succeed.
    - ``status`` of an absent deployment returns ``Status.ABSENT``; it does not raise.
    - Methods return promptly (one or a few API calls). All waiting goes through
      ``wait_until``, with a deadline, in the layer above.
    - Vendor failures raise ``ProviderError`` (3), ``CredentialsError`` (4) or
      ``CapacityError`` (5) with the vendor's message; secrets never appear in them.

    Below the abstract methods are the optional capabilities: each has a default that means
    "this platform has no such thing", and a provider overrides the ones its vendor has.
    """

    name: ClassVar[str]
    # Servers come and go with empty memories (serverless workers stop when idle): a job's
    # cleanup leaves the platform to scale to zero instead of stopping the deployment.
    ephemeral_servers: ClassVar[bool] = False

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig) -> None:
        self.env = env

    # -- the contract -------------------------------------------------------------------

    @abc.abstractmethod
    def find(self, name: str) -> Deployment | None:
        """The deployment with this name, or None."""

    @abc.abstractmethod
    def list_managed(self) -> list[Deployment]:
        """Every deployment labelled ``managed-by=ollama-ondemand``, across names."""

    @abc.abstractmethod
    def deploy(self, spec: Spec) -> Deployment:
        """Create the deployment, or update it to match ``spec``."""

    @abc.abstractmethod
    def start(self, deployment_id: str) -> Deployment:
        """Ask the vendor to start it; return without waiting."""

    @abc.abstractmethod
    def stop(self, deployment_id: str) -> Deployment:
        """Ask the vendor to stop it; succeed if already stopped or absent."""

    @abc.abstractmethod
    def status(self, deployment_id: str) -> Deployment:
        """The current state; ``Status.ABSENT`` when it does not exist."""

    @abc.abstractmethod
    def delete(self, deployment_id: str) -> None:
        """Remove it (never the model cache volume); succeed if absent."""

    # -- optional capabilities ------------------------------------------------------------

    def close(self) -> None:
        """Release the API client's connections."""

    def deployed_env(self, deployment_id: str) -> dict[str, str]:
        """The environment the deployment was made with (its keys travel in it); empty when
        it is absent or the platform does not show it."""
        return {}

    def stored_secret(self, deployment_id: str, env_name: str) -> str | None:
        """One variable of ``deployed_env``, e.g. a key the deployment was made with."""
        return self.deployed_env(deployment_id).get(env_name) or None

    def gateway_headers(self) -> dict[str, str]:
        """What the platform's front door needs besides our key (RunPod's gateway wants the
        account key in Authorization, so our key travels in X-API-Key)."""
        return {}

    def client_env(self) -> tuple[dict[str, str], str | None]:
        """What later steps' clients need besides our key to pass the platform's front door
        (exported with the URL), and a warning about it when something is missing."""
        return {}, None

    def probe_would_wake(self, deployment: Deployment) -> bool:
        """Whether asking the server now would start a worker (and its bill)."""
        return False

    def readiness_problem(self, deployment: Deployment, ping: int | None) -> Exception | None:
        """What the platform knows about a server that is not coming up (workers that
        cannot get a GPU, or crash as they start); None while nothing is wrong."""
        return None

    def explain_timeout(self, deployment: Deployment) -> Exception | None:
        """A better error than "timed out" when the platform knows why, else None."""
        return None

    def explain_failure(self, deployment: Deployment) -> Exception | None:
        """The error for a deployment that ended FAILED, else None (the lifecycle then
        reports the end of the server log)."""
        return None

    def log_hint(self, deployment: Deployment) -> str | None:
        """Where the server's log is: a path, a command or a console URL."""
        return None

    def log_tail(self, deployment: Deployment) -> str | None:
        """The end of the server's log, when it can be read from here."""
        return None

    def scale_to_zero(self, deployment_id: str) -> int | None:
        """A job's cleanup on a platform that stops idle servers itself: drop any floor of
        running servers and answer the idle seconds after which it stops them; None where
        the platform never stops a server by itself."""
        return None

    def spec_changes(self, spec: Spec) -> list[str]:
        """What would change if ``spec`` were deployed over the deployment as it is now,
        besides the model list (image, GPU, environment), one phrase each; secrets are
        named, never shown. Empty when nothing would change, or when it cannot tell."""
        return []

    def stopped_note(self) -> str:
        """What still bills once it is stopped (a disk, a volume, a bucket); empty when
        nothing does."""
        return ""

    def kept_after_delete(self) -> str:
        """What outlives a delete (the model cache); empty when nothing does."""
        return ""

    def save_model_cache(self, deployment_id: str) -> CacheSync | None:
        """Copy the running server's model store to where the next start reads it, when
        the platform does not do so by itself; None where nothing needs copying."""
        return None

    def model_cache_sync(self, deployment_id: str) -> CacheSync | None:
        """The last such copy, or None."""
        return None


def wait_until(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 2.0,
    max_interval: float = 15.0,
    on_poll: Callable[[T, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll ``probe`` until ``done(result)``, backing off, and never past the deadline.

    The one place that waits. ``on_poll(result, elapsed)`` reports progress on long waits.
    Raises ``ReadyTimeoutError`` naming ``what`` and the last result when time runs out.
    """
    start = clock()
    deadline = start + timeout
    delay = interval
    while True:
        result = probe()
        now = clock()
        if on_poll is not None:
            on_poll(result, now - start)
        if done(result):
            return result
        remaining = deadline - now
        if remaining <= 0:
            raise ReadyTimeoutError(
                f"timed out after {timeout:g}s waiting for {what}",
                cause=f"the last state seen was: {result}",
                hint="raise the timeout (--timeout), or check the provider's console and logs",
            )
        sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)
