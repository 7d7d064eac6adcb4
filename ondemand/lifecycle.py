"""deploy, start, up, down, status, delete: the lifecycle, written once for every provider.

Providers only talk to their vendor; everything a user sees (the spec built from the
config, waiting with progress, the server's own view of readiness, what to print) is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ondemand.errors import (
    ConfigError,
    OndemandError,
    ProviderError,
    ReadyTimeoutError,
    UnhealthyError,
)
from ondemand.leasing import Restart
from ondemand.providers.base import (
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    Deployment,
    Provider,
    Spec,
    Status,
    wait_until,
)

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.leasing import Lease, LeaseTaker
    from ondemand.providers.costs import Estimate

MAX_RESTARTS = 5  # times 'up' starts again a server stopped under it before giving up

Progress = Callable[[str], None]
# Told the deployment as soon as its URL is known, before any wait (Actions outputs).
Announce = Callable[[Deployment], None]


def _quiet(_: str) -> None:
    pass


def make_provider(resolved: ResolvedConfig, env: Mapping[str, str]) -> Provider:
    from ondemand.providers import provider_class

    cls: Any = provider_class(resolved.config.provider)
    provider: Provider = cls(env=env, config=resolved)
    return provider


@contextlib.contextmanager
def opened_provider(resolved: ResolvedConfig, env: Mapping[str, str]) -> Iterator[Provider]:
    """``make_provider`` for a block: its API client is closed at the end (a caller that
    runs many, one per thread, leaks no connections)."""
    provider = make_provider(resolved, env)
    try:
        yield provider
    finally:
        close = getattr(provider, "close", None)
        if callable(close):
            close()


# What a server needs to reach its provider's API and stop itself (ONDEMAND_IDLE_STOP).
_API_URLS = {
    "ovh": ("OVH_AI_API_URL", "OVH_REGION"),
    "sandbox": ("ONDEMAND_SANDBOX_URL",),
    "runpod": ("RUNPOD_API_URL",),
    "runpod-pod": ("RUNPOD_API_URL",),
}
_CREDENTIALS = {
    "ovh": ("ovh_token", "OVH_AI_TOKEN"),
    "runpod": ("runpod_api_key", "RUNPOD_API_KEY"),
    "runpod-pod": ("runpod_api_key", "RUNPOD_API_KEY"),
}


def _self_stop_env(resolved: ResolvedConfig, cli_env: Mapping[str, str]) -> dict[str, str]:
    from ondemand.configtypes import format_duration

    config = resolved.config
    env = {
        "ONDEMAND_IDLE_STOP": format_duration(config.idle_timeout),
        "ONDEMAND_MAX_LIFETIME": format_duration(config.max_lifetime),
        "ONDEMAND_PROVIDER": config.provider,
        "ONDEMAND_NAME": config.name,
    }
    if config.region:
        env["OVH_REGION"] = config.region
    for name in _API_URLS.get(config.provider, ()):
        if cli_env.get(name):
            env[name] = cli_env[name]
    return env


def _self_stop_secrets(resolved: ResolvedConfig) -> dict[str, str]:
    field, env_name = _CREDENTIALS.get(resolved.config.provider, ("", ""))
    value = _secret(resolved, field) if field else None
    return {env_name: value} if value else {}


def build_spec(
    resolved: ResolvedConfig,
    api_key: str,
    admin_key: str | None,
    cli_env: Mapping[str, str] | None = None,
) -> Spec:
    """The deployment the config asks for. Secrets travel only in ``secret_env``."""
    config = resolved.config
    env: dict[str, str] = {"OLLAMA_PRELOAD_MODELS": ",".join(config.models)}
    if config.require_gpu:
        env["ONDEMAND_REQUIRE_GPU"] = "1"
        env["ONDEMAND_GPU"] = config.gpu
    if config.keep_alive:
        env["ONDEMAND_KEEP_ALIVE"] = config.keep_alive
    if config.max_keep_alive:
        env["ONDEMAND_MAX_KEEP_ALIVE"] = config.max_keep_alive
    secret_env = {"AUTHORIZATION_APIKEY": api_key}
    if admin_key:
        secret_env["ONDEMAND_ADMIN_KEY"] = admin_key
    if config.self_stop:
        env.update(_self_stop_env(resolved, cli_env or {}))
        secret_env.update(_self_stop_secrets(resolved))
    # The local provider picks a free port unless one was asked for explicitly.
    port_given = resolved.source("port") != "default"
    port = config.port if port_given or config.provider != "local" else 0
    return Spec(
        name=config.name,
        image=config.image or "",
        models=tuple(config.models),
        env=env,
        secret_env=secret_env,
        gpu=config.gpu,
        gpu_count=config.gpu_count,
        cpu=config.cpu,
        memory=config.memory,
        port=port,
        region=config.region,
        volume=config.volume,
        labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: config.name},
    )


def _secret(resolved: ResolvedConfig, name: str) -> str | None:
    value = getattr(resolved.secrets, name)
    return value.get_secret_value() if value is not None else None


def _stored(provider: Provider, name: str, env_name: str) -> str | None:
    stored = getattr(provider, "stored_secret", None)
    value = stored(name, env_name) if callable(stored) else None
    return value if isinstance(value, str) and value else None


def _api_key(resolved: ResolvedConfig, provider: Provider, name: str) -> str | None:
    """The user key: ONDEMAND_API_KEY, else the one the deployment was made with."""
    return _secret(resolved, "api_key") or _stored(provider, name, "AUTHORIZATION_APIKEY")


def admin_key(resolved: ResolvedConfig, provider: Provider, name: str) -> str | None:
    """The admin key (leases, draining): ONDEMAND_ADMIN_KEY, else the deployment's own."""
    return _secret(resolved, "admin_key") or _stored(provider, name, "ONDEMAND_ADMIN_KEY")


# -- readiness -----------------------------------------------------------------------


@dataclass
class Readiness:
    """What the server says about itself while the lifecycle waits for it."""

    ping: int | None = None  # None: not answering yet
    status: dict[str, Any] = field(default_factory=dict)  # /ondemand/status, when a key is known
    ping_status: str | None = None  # the "status" word of /ping's own answer

    @property
    def failed(self) -> bool:
        """The server itself says a model cannot be made ready (not a gateway's 503)."""
        return self.ping == 503 and "failed" in (self.ping_status, self.server.get("phase"))

    @property
    def server(self) -> dict[str, Any]:
        server = self.status.get("server")
        return server if isinstance(server, dict) else {}

    def __str__(self) -> str:
        if self.ping is None:
            return "the server is not answering yet"
        phase = self.server.get("phase") or {200: "ready", 204: "starting"}.get(self.ping, "")
        return f"/ping {self.ping} ({phase})" if phase else f"/ping {self.ping}"


def gateway_headers(provider: Provider) -> dict[str, str]:
    """What the provider's front door needs besides our key (RunPod's gateway wants the
    account key in Authorization, so our key travels in X-API-Key)."""
    headers = getattr(provider, "gateway_headers", None)
    return dict(headers()) if callable(headers) else {}


SERVER_PINGS = frozenset({200, 204, 503})


def read_readiness(
    url: str, api_key: str | None, headers: Mapping[str, str] | None = None
) -> Readiness:
    import httpx

    try:
        answer = httpx.get(url + "/ping", headers=dict(headers or {}), timeout=5)
    except httpx.HTTPError:
        return Readiness()
    ping = answer.status_code
    try:
        word = answer.json().get("status") if answer.content else None
    except (ValueError, AttributeError):
        word = None
    status: dict[str, Any] = {}
    # Only our server answers /ping with these; anything else came from a gateway in front
    # (RunPod's holds each request until a worker is ready), so asking again only waits.
    if api_key and ping in SERVER_PINGS:
        try:
            response = httpx.get(
                url + "/ondemand/status",
                headers={**(headers or {}), "X-API-Key": api_key},
                timeout=5,
            )
            if response.status_code == 200:
                status = response.json()
        except (httpx.HTTPError, ValueError):
            pass
    return Readiness(ping, status, word if isinstance(word, str) else None)


def describe_models(server: Mapping[str, Any]) -> list[str]:
    lines = []
    for model in server.get("models") or []:
        phase = model.get("phase")
        text = f"{model.get('name')}: {phase}"
        if phase == "pulling" and model.get("progress") is not None:
            text += f" {round(float(model['progress']) * 100)}%"
        if phase == "warm" and model.get("on_gpu") is not None:
            text += " (GPU)" if model["on_gpu"] else " (CPU)"
        if model.get("error"):
            text += f": {model['error']}"
        lines.append(text)
    return lines


@dataclass
class Waiting:
    """One look at a deployment on its way to ready: the provider's view and the server's."""

    provider: str
    deployment: Deployment
    readiness: Readiness

    def lines(self) -> list[str]:
        state = self.deployment.vendor_state or self.deployment.status.value
        head = f"{self.provider}: {state}"
        if self.deployment.detail:
            head += f" ({self.deployment.detail})"
        if self.deployment.status is not Status.RUNNING:
            return [head]
        return [head, str(self.readiness), *describe_models(self.readiness.server)]

    def __str__(self) -> str:
        return "; ".join(self.lines())


class _Reporter:
    """Prints what changed while waiting, once each, not the same line every poll."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: set[str] = set()

    def __call__(self, state: Waiting, elapsed: float) -> None:
        for line in state.lines():
            if line not in self.seen:
                self.seen.add(line)
                self.progress(f"  [{elapsed:5.1f}s] {line}")


# -- results -----------------------------------------------------------------------------


@dataclass
class UpResult:
    deployment: Deployment
    url: str
    api_key: str | None
    reused: bool
    seconds_to_start: float
    seconds_to_warm: float
    models: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lease: Lease | None = None
    lease_problem: str | None = None  # why no lease was taken

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"


@dataclass
class DownResult:
    deployment: Deployment
    was_running: bool
    message: str
    cost: Estimate | None = None  # the deployment's compute since it started, when stopped
    kept: bool = False  # still running: other leases, requests in flight, or no answer
    scales_to_zero: bool = False  # left running for the platform to stop once idle
    share: Estimate | None = None  # this run's share: how long its lease was held
    released: list[dict[str, Any]] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)  # the leases that kept it running


def _no_announce(_: Deployment) -> None:
    pass


# -- commands ------------------------------------------------------------------------------


def deploy(
    resolved: ResolvedConfig, provider: Provider, *, keep_running: bool = False
) -> Deployment:
    """Create the deployment or update it to the config; mint a key if none is given.

    Some clouds start what they create (OVH runs a new app at once). Unless the caller goes
    on to use it (``up``), a deployment this call created is stopped again: deploying must
    not leave a GPU billing.
    """
    from ondemand.keys import mint

    name = resolved.config.name
    api_key = _api_key(resolved, provider, name) or mint(name).key
    # Every deployment gets an admin key, so 'up' and 'down' can always take and release
    # leases; it stays with the deployment, like the user key.
    admin = admin_key(resolved, provider, name) or mint(admin=True).key
    deployed = provider.deploy(build_spec(resolved, api_key, admin, getattr(provider, "env", None)))
    if (
        not keep_running
        and deployed.detail in ("created", "recreated")
        and deployed.status.billable
    ):
        stopped = provider.stop(name)
        return dataclasses.replace(stopped, detail=f"{deployed.detail}, then stopped")
    return deployed


def start(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    wait: bool = True,
    progress: Progress = _quiet,
    announce: Announce = _no_announce,
) -> UpResult:
    name = resolved.config.name
    current = provider.status(name)
    if current.status is Status.ABSENT:
        raise ProviderError(
            f"there is no deployment named {name!r} on {provider.name}",
            hint="run 'ondemand deploy' first, or 'ondemand up' to deploy and start",
        )
    return _start_and_wait(
        resolved, provider, current, wait=wait, progress=progress, announce=announce
    )


def up(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    progress: Progress = _quiet,
    announce: Announce = _no_announce,
    lease: bool = True,
    holder: str | None = None,
) -> UpResult:
    """Deploy if missing (or update), start, take a lease, and wait until every model is
    warm. A server stopped under it (another job's cleanup) is started again."""
    from ondemand.leasing import LeaseTaker
    from ondemand.serverapi import holder_name

    config = resolved.config
    name = config.name
    deadline = time.monotonic() + config.timeout.total_seconds()
    taker: LeaseTaker | None = None
    if lease:
        taker = LeaseTaker(
            holder or holder_name({}),
            config.lease_ttl.total_seconds(),
            gateway_headers(provider),
            run_key=config.run_key and not getattr(provider, "ephemeral_servers", False),
            models=list(config.models) or None,
        )
    restarts = 0
    while True:
        current = provider.status(name)
        if current.status not in (Status.RUNNING, Status.STARTING, Status.PENDING):
            current = deploy(resolved, provider, keep_running=True)
        if taker is not None and taker.admin_key is None:
            taker.use_admin_key(admin_key(resolved, provider, name))
        try:
            result = _start_and_wait(
                resolved, provider, current, wait=True, progress=progress, announce=announce,
                deadline=deadline, taker=taker,
            )  # fmt: skip
        except Restart as why:
            if taker is not None:
                taker.release()
            restarts += 1
            if restarts > MAX_RESTARTS or time.monotonic() >= deadline:
                raise ProviderError(
                    f"{name} was stopped {restarts} times while starting: {why}",
                    cause="other jobs' cleanups or a watchdog keep stopping it",
                    hint="check which workflows run 'ondemand down --force' or 'stop'",
                ) from why
            progress(f"{name}: {why}; starting it again once it has stopped")
            time.sleep(0.5)
            continue
        except BaseException:
            # A failed or cancelled 'up': its job will not use the server, so it must not
            # keep it running for another job's cleanup to find.
            if taker is not None:
                taker.release()
            raise
        if taker is not None:
            result.lease, result.lease_problem = taker.lease, taker.problem
            if taker.lease is not None and taker.lease.key:
                result.api_key = taker.lease.key
        return result


def _start_and_wait(
    resolved: ResolvedConfig,
    provider: Provider,
    current: Deployment,
    *,
    wait: bool,
    progress: Progress,
    announce: Announce = _no_announce,
    deadline: float | None = None,
    taker: LeaseTaker | None = None,
) -> UpResult:
    name = resolved.config.name
    reused = current.status is Status.RUNNING
    began = time.monotonic()
    if deadline is None:
        deadline = began + resolved.config.timeout.total_seconds()
    if current.status is Status.STOPPING:
        # A start is refused until the stop has finished (a 'down' a moment ago).
        progress(f"{name} is still stopping; starting it once it has stopped")
        current = wait_until(
            lambda: provider.status(name),
            lambda d: d.status is not Status.STOPPING,
            timeout=max(0.0, deadline - time.monotonic()),
            what=f"{name} to finish stopping",
            interval=0.2,
            max_interval=1.0,
        )
    if reused:
        progress(f"{name} is already running on {provider.name}")
    # Already on its way up (a cloud that starts what it creates, another job's start):
    # starting again could only restart a failure this wait should report.
    on_its_way = current.status in (Status.PENDING, Status.STARTING, Status.RUNNING)
    deployment = current if on_its_way else _start_once(provider, name)
    # The provider's remarks about a running deployment (e.g. the emulator in use); its
    # state messages on the way there are part of the progress lines below.
    running = deployment.status is Status.RUNNING
    notes = [deployment.detail] if deployment.detail and running else []
    for note in notes:
        progress(note)
    api_key = _api_key(resolved, provider, name)
    if deployment.url:
        announce(deployment)
    if not wait:
        return UpResult(deployment, deployment.url or "", api_key, reused, 0.0, 0.0, notes=notes)
    timeout = max(0.0, deadline - time.monotonic())
    reporter = _Reporter(progress)
    front_door = gateway_headers(provider)
    check = getattr(provider, "readiness_problem", None)
    started_at: list[float] = []
    shown_url: list[str] = []
    seen_alive: list[bool] = []

    def probe() -> Waiting:
        state = provider.status(name)
        if state.status in (Status.PENDING, Status.STARTING, Status.RUNNING):
            seen_alive.append(True)
        if taker is not None and _stopped_under_us(provider, state, taker, bool(seen_alive)):
            raise Restart(f"it went {state.vendor_state or state.status.value} while starting")
        if state.status in (Status.STOPPED, Status.FAILED, Status.ABSENT):
            raise _server_died(provider, state)
        if state.url and not shown_url:
            shown_url.append(state.url)
            progress(f"url: {state.url} (waiting until it is ready)")
            if not deployment.url:
                announce(state)
        # Before the provider reports it running, whatever answers at the URL (a gateway's
        # 503, nothing) says nothing about the server.
        running = state.status is Status.RUNNING and state.url
        ready = (
            read_readiness(state.url, api_key, front_door) if running and state.url else Readiness()
        )
        # A provider may know better than the server why it is not coming up (workers
        # that cannot get a GPU, or that crash as they start).
        problem = check(state, ready.ping) if callable(check) else None
        if problem is not None:
            raise problem
        if ready.ping is not None and not started_at:
            started_at.append(time.monotonic())
        if ready.failed:
            raise _unhealthy(name, ready)
        if taker is not None and state.url and ready.ping in SERVER_PINGS:
            # As soon as the server answers, even while it warms: from then on no other
            # job's cleanup can stop it under this one.
            taker.attempt(state.url)
        return Waiting(provider.name, state, ready)

    def done(result: Waiting) -> bool:
        return result.readiness.ping == 200 and (taker is None or taker.settled)

    try:
        waited = wait_until(
            probe,
            done,
            timeout=timeout,
            what=f"{name} to be ready",
            # Fast at first (a local or cached start is ready within a second or two), and
            # never more than a second apart, so 'up' returns soon after the server is ready.
            interval=0.1,
            max_interval=1.0,
            on_poll=reporter,
        )
    except ReadyTimeoutError as exc:
        # The budget is the whole 'up' (restarts included), as the user set it.
        exc.message = (
            f"timed out after {resolved.config.timeout.total_seconds():g}s waiting for "
            f"{name} to be ready"
        )
        explain = getattr(provider, "explain_timeout", None)
        better = explain(provider.status(name)) if callable(explain) else None
        if better is not None:
            raise better from exc
        exc.hint = "raise --timeout (ONDEMAND_TIMEOUT), and check the server log" + (
            f" ({_log_hint(provider, name)})" if _log_hint(provider, name) else ""
        )
        raise
    deployment, ready = waited.deployment, waited.readiness
    finished = time.monotonic()
    first = started_at[0] if started_at else finished
    return UpResult(
        deployment=deployment,
        url=deployment.url or "",
        api_key=api_key,
        reused=reused,
        seconds_to_start=first - began,
        seconds_to_warm=finished - first,
        models=list(ready.server.get("models") or []),
        notes=notes,
    )


def _start_once(provider: Provider, name: str) -> Deployment:
    """Start it; when another job's start won the race (the vendor refuses a second
    start), go on with the start already under way."""
    try:
        return provider.start(name)
    except ProviderError:
        now = provider.status(name)
        if now.status in (Status.PENDING, Status.STARTING, Status.RUNNING):
            return now
        raise


def _stopped_under_us(
    provider: Provider, state: Deployment, taker: LeaseTaker, seen_alive: bool
) -> bool:
    """A clean stop while 'up' waits: another job's cleanup won (it drained first)."""
    if state.status is Status.STOPPING:
        return True
    # A local server that stops on its own has crashed; elsewhere a crash is FAILED.
    clean = provider.name != "local" or taker.saw_draining
    return state.status is Status.STOPPED and seen_alive and clean


def _log_hint(provider: Provider, name: str) -> str | None:
    log_path = getattr(provider, "log_path", None)
    return f"log: {log_path(name)}" if callable(log_path) else None


def _log_tail(provider: Provider, name: str, lines: int = 12) -> str | None:
    log_path = getattr(provider, "log_path", None)
    if not callable(log_path):
        return None
    try:
        text = log_path(name).read_text(errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:]) or None


def _server_died(provider: Provider, state: Deployment) -> Exception:
    explain = getattr(provider, "explain_failure", None)
    if state.status is Status.FAILED and callable(explain):
        failure: Exception = explain(state)
        return failure
    return _local_failure(provider, state)


def _local_failure(provider: Provider, state: Deployment) -> OndemandError:
    tail = _log_tail(provider, state.name) or ""
    error_line = next(
        (
            line[len("error: ") :]
            for line in reversed(tail.splitlines())
            if line.startswith("error:")
        ),
        None,
    )
    if error_line:
        return ConfigError(
            f"the server stopped during start-up: {error_line}",
            hint=_log_hint(provider, state.name),
        )
    return ProviderError(
        f"the server stopped during start-up ({state.status.value})",
        cause=("its log ends with:\n" + tail) if tail else state.detail,
        hint=_log_hint(provider, state.name),
    )


def _unhealthy(name: str, ready: Readiness) -> UnhealthyError:
    problems = ready.server.get("problems") or []
    return UnhealthyError(
        f"{name} is unhealthy: " + ("; ".join(problems) if problems else str(ready)),
        cause="a model could not be pulled or loaded, or landed on the CPU while a GPU was "
        "required",
        hint="fix the model list or the GPU type, then run 'ondemand up' again "
        "('ondemand status' shows each model)",
    )


def down(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    delete_after: bool = False,
    force: bool = False,
    lease_id: str | None = None,
    holder: str | None = None,
) -> DownResult:
    """Release this job's lease and stop the deployment when the server agrees nothing else
    needs it (or ``force``); verify it stopped. Absent or stopped is success."""
    from ondemand.leasing import StopCheck, check_stop, stopping_after
    from ondemand.serverapi import holder_name

    config = resolved.config
    name = config.name
    before = provider.status(name)
    was_running = before.status.billable
    if before.status is Status.ABSENT:
        return DownResult(before, False, f"nothing to stop: there is no deployment named {name!r}")
    wakes = getattr(provider, "probe_would_wake", None)
    # No worker up (a serverless endpoint at zero): asking the server would start one.
    asleep = bool(callable(wakes) and wakes(before))
    soft = getattr(provider, "let_scale_to_zero", None)
    if was_running and not force and not delete_after and callable(soft):
        return _let_scale_to_zero(resolved, provider, before, lease_id, soft, asleep=asleep)
    check = StopCheck(True, "")
    if was_running and not force:
        check = check_stop(
            before,
            admin_key=admin_key(resolved, provider, name),
            headers=gateway_headers(provider),
            lease_id=lease_id,
            holder=holder or holder_name({}),
            drain_seconds=config.timeout.total_seconds() + 60,
            max_lifetime_seconds=config.max_lifetime.total_seconds(),
            server_absent=asleep,
        )
    share = _share(resolved, provider, check.released)
    if not check.stop:
        message = f"{name}: {check.message}"
        if delete_after:
            message += " (not deleted either)"
        return DownResult(
            before, True, message, kept=True, share=share,
            released=check.released, holders=check.holders,
        )  # fmt: skip
    cost = run_cost(resolved, provider, before) if was_running else None
    with stopping_after(check.drained_via):
        after = stop_and_verify(resolved, provider) if was_running else before
    if delete_after:
        provider.delete(name)
        after = dataclasses.replace(after, status=Status.ABSENT)
    message = f"stopped {name}" if was_running else f"{name} was already stopped"
    if was_running and check.message:
        message += f" ({check.message})"
    if delete_after:
        kept = getattr(provider, "kept_after_delete", None)
        text = kept() if callable(kept) else ""
        message += f"; deployment deleted ({text})" if text else "; deployment deleted"
    elif callable(note := getattr(provider, "stopped_note", None)) and (text := note()):
        # Stopped is not always free (a pod's disk, the model cache): say so where it is
        # decided.
        message += f"; {text}"
    return DownResult(after, was_running, message, cost, share=share, released=check.released)


def _let_scale_to_zero(
    resolved: ResolvedConfig,
    provider: Provider,
    before: Deployment,
    lease_id: str | None,
    let_scale_to_zero: Callable[[str], int],
    *,
    asleep: bool,
) -> DownResult:
    """A serverless endpoint's cleanup. Its workers start with empty memories, so no server
    can tell whether another job still uses the endpoint, and stopping it could cut off a
    job between two requests. The platform itself stops each worker once idle, never one
    serving a request: this job gives its lease back and leaves the endpoint to do that."""
    from ondemand.serverapi import ServerApi

    name = resolved.config.name
    released: list[dict[str, Any]] = []
    key = admin_key(resolved, provider, name)
    # With no worker up, its lease went with the worker.
    if lease_id and key and before.url and not asleep:
        with ServerApi(before.url, key, gateway_headers(provider), timeout=10) as api:
            answer = api.release(lease_id)
        if answer.ok and isinstance(answer.body.get("lease"), dict):
            released.append(answer.body["lease"])
    idle = let_scale_to_zero(name)
    message = (
        f"{name}: left to scale to zero: each worker stops {idle}s after its last request, "
        "and none serving a request is cut off ('ondemand down --force' stops it now)"
    )
    share = _share(resolved, provider, released)
    return DownResult(before, True, message, share=share, released=released, scales_to_zero=True)


def _share(
    resolved: ResolvedConfig, provider: Provider, released: list[dict[str, Any]]
) -> Estimate | None:
    """This run's share of the bill: how long its lease was held, by the server's clock."""
    from ondemand.providers.costs import for_seconds

    if not released:
        return None
    config = resolved.config
    held = sum(float(lease.get("held_seconds") or 0) for lease in released)
    return for_seconds(provider.name, held, config.gpu, config.gpu_count, config.prices)


def stop_and_verify(
    resolved: ResolvedConfig, provider: Provider, name: str | None = None
) -> Deployment:
    """Stop, then poll until the provider reports no billable compute; exit 3 when it
    does not stop by the deadline (it may still bill)."""
    name = name or resolved.config.name
    try:
        after = provider.stop(name)
    except ProviderError:
        # Another stop won the race (the vendor refuses a second one): go on verifying.
        after = provider.status(name)
        if after.status not in (Status.STOPPING, Status.STOPPED, Status.ABSENT):
            raise
    seen_stopping = [after.status is Status.STOPPING]

    def stopped(d: Deployment) -> bool:
        # On its way up again after we saw it stopping: it stopped, and another job's 'up'
        # has started it since (that job holds a lease on the new server).
        restarted = seen_stopping[0] and d.status in (
            Status.PENDING, Status.STARTING, Status.RUNNING
        )  # fmt: skip
        seen_stopping[0] = seen_stopping[0] or d.status is Status.STOPPING
        return not d.status.billable or restarted

    if not stopped(after):
        timeout = resolved.config.timeout.total_seconds()
        try:
            after = wait_until(
                lambda: provider.status(name),
                stopped,
                timeout=timeout,
                what=f"{name} to stop",
                interval=0.2,
                max_interval=2.0,
            )
        except ReadyTimeoutError as exc:
            # Not a wait for readiness: compute that does not stop is a provider problem,
            # and it may still be billing.
            last = provider.status(name)
            raise ProviderError(
                f"{name} did not stop: {provider.name} still reports it "
                f"{last.vendor_state or last.status.value} after {timeout:g}s",
                cause="the provider accepted the stop but has not finished it; until it does "
                "the compute may still bill",
                hint="run 'ondemand down' again (it is safe to repeat), or check the "
                "deployment in the provider's console",
            ) from exc
    return after


def run_cost(resolved: ResolvedConfig, provider: Provider, deployment: Deployment) -> Estimate:
    from ondemand.providers.costs import estimate

    config = resolved.config
    return estimate(
        provider.name, deployment.running_since, config.gpu, config.gpu_count, config.prices
    )


def delete(resolved: ResolvedConfig, provider: Provider) -> DownResult:
    """The explicit removal: whoever holds it (``down --delete`` keeps to the leases)."""
    return down(resolved, provider, delete_after=True, force=True)


def status(resolved: ResolvedConfig, provider: Provider) -> dict[str, Any]:
    """The provider's view plus the server's own (readiness, models, activity)."""
    name = resolved.config.name
    deployment = provider.status(name)
    report: dict[str, Any] = {
        "name": name,
        "provider": provider.name,
        "status": deployment.status.value,
        "vendor_state": deployment.vendor_state,
        "url": deployment.url,
        "detail": deployment.detail,
        "created_at": deployment.created_at.isoformat() if deployment.created_at else None,
    }
    if deployment.status.billable and deployment.status is not Status.ABSENT:
        cost = run_cost(resolved, provider, deployment)
        report["running_since"] = (
            deployment.running_since.isoformat() if deployment.running_since else None
        )
        report["uptime_seconds"] = round(cost.seconds, 1)
        report["cost"] = {
            "amount": cost.amount,
            "currency": cost.currency,
            "hourly": cost.hourly,
            "estimate": cost.describe(),
        }
    wakes = getattr(provider, "probe_would_wake", None)
    if deployment.status is Status.RUNNING and callable(wakes) and wakes(deployment):
        # Asking would start a worker and its bill: report the provider's view only.
        report["ready"] = None
        report["note"] = "no worker is running: the next request starts one (cold start)"
    elif deployment.status is Status.RUNNING and deployment.url:
        key = _api_key(resolved, provider, name)
        ready = read_readiness(deployment.url, key, gateway_headers(provider))
        report["ping"] = ready.ping
        report["ready"] = ready.ping == 200
        if ready.status:
            report["server"] = ready.status
    return report
