"""``start`` and ``up``: bring the deployment up, wait until its models are warm, and (for
``up``) hold a lease on it for this job.

``up`` makes what runs match the config: it deploys what is missing, starts a stopped
deployment from its own spec (its image, when the config names none), redeploys one whose
image, GPU or environment changed once no other job holds it, and pulls and warms models
added to the list on the running server. An ``up`` that fails or is cancelled gives its
lease back and stops what it started itself, unless another job holds it by then or
``--keep-on-failure`` asks to keep it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ondemand.errors import OndemandError, ProviderError, ReadyTimeoutError
from ondemand.leasing import Restart
from ondemand.lifecycle.deployment import admin_key, deploy, quiet, user_key
from ondemand.lifecycle.readiness import ReadyWait, no_announce
from ondemand.providers.base import Status, wait_until

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.leasing import Lease, LeaseTaker
    from ondemand.lifecycle.deployment import Progress
    from ondemand.lifecycle.readiness import Announce
    from ondemand.providers.base import Deployment, Provider

MAX_RESTARTS = 5  # times 'up' starts again a server stopped under it before giving up
SERVING = (Status.PENDING, Status.STARTING, Status.RUNNING)


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


def start(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    wait: bool = True,
    progress: Progress = quiet,
    announce: Announce = no_announce,
) -> UpResult:
    name = resolved.config.name
    current = provider.status(name)
    if current.status is Status.ABSENT:
        raise ProviderError(
            f"there is no deployment named {name!r} on {provider.name}",
            hint="run 'ondemand deploy' first, or 'ondemand up' to deploy and start",
        )
    return start_and_wait(
        resolved, provider, current, wait=wait, progress=progress, announce=announce
    )


def up(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    progress: Progress = quiet,
    announce: Announce = no_announce,
    lease: bool = True,
    holder: str | None = None,
    keep_on_failure: bool = False,
) -> UpResult:
    """Deploy if missing (or update), start, take a lease, and wait until every model is
    warm. A server stopped under it (another job's cleanup) is started again."""
    from ondemand.holders import holder_name
    from ondemand.leasing import LeaseTaker

    config = resolved.config
    name = config.name
    holder = holder or holder_name({}, name)
    taker: LeaseTaker | None = None
    if lease:
        taker = LeaseTaker(
            holder,
            config.lease_ttl.total_seconds(),
            provider.gateway_headers(),
            run_key=config.run_key,
            models=list(config.models) or None,
        )
    attempt = _Attempt(resolved, provider, taker, holder, progress)
    try:
        result = attempt.run(announce)
    except BaseException as exc:
        # A failed or cancelled 'up': its job will not use the server, so it must not keep
        # it running for another job's cleanup to find.
        attempt.clean_up(exc, keep=keep_on_failure)
        raise
    if taker is not None:
        result.lease, result.lease_problem = taker.lease, taker.problem
        if taker.lease is not None and taker.lease.key:
            result.api_key = taker.lease.key
    return result


class _Attempt:
    """One ``up``: what it found, what it started, and how to undo that if it fails."""

    def __init__(
        self,
        resolved: ResolvedConfig,
        provider: Provider,
        taker: LeaseTaker | None,
        holder: str,
        progress: Progress,
    ) -> None:
        self.resolved = resolved
        self.provider = provider
        self.taker = taker
        self.holder = holder
        self.progress = progress
        self.name = resolved.config.name
        self.deadline = time.monotonic() + resolved.config.timeout.total_seconds()
        self.started_here = False  # this up deployed or started it (so may stop it again)
        self.last: Deployment | None = None

    def run(self, announce: Announce) -> UpResult:
        from ondemand.lifecycle.cache import save_after_pulls
        from ondemand.lifecycle.reconcile import add_models, redeploy_if_changed

        provider, name, taker = self.provider, self.name, self.taker
        notes: list[str] = []
        restarts = 0
        while True:
            current = self.last = provider.status(name)
            if current.status is Status.RUNNING and not self.started_here:
                changed = redeploy_if_changed(
                    self.resolved, provider, current, self.holder, self.progress
                )
                if changed.redeployed:
                    continue  # stopped: started again below, from the new spec
                notes += changed.notes
            if current.status not in SERVING:
                # A stopped deployment starts from its own spec: its image, unless the config
                # names another (the seed's flow: deploy once, start and stop every day).
                current = deploy(self.resolved, provider, keep_running=True, image=current.image)
                self.started_here = True
            if taker is not None and taker.admin_key is None:
                taker.use_admin_key(admin_key(self.resolved, provider, name))
            try:
                result = start_and_wait(
                    self.resolved, provider, current, wait=True, progress=self.progress,
                    announce=announce, deadline=self.deadline, taker=taker,
                )  # fmt: skip
            except Restart as why:
                if taker is not None:
                    taker.release()
                restarts += 1
                if restarts > MAX_RESTARTS or time.monotonic() >= self.deadline:
                    raise ProviderError(
                        f"{name} was stopped {restarts} times while starting: {why}",
                        cause="other jobs' cleanups or a watchdog keep stopping it",
                        hint="check which workflows run 'ondemand down --force' or 'stop'",
                    ) from why
                self.progress(f"{name}: {why}; starting it again once it has stopped")
                time.sleep(0.5)
                continue
            self.last = result.deployment
            result.notes += notes
            if not self.started_here:
                add_models(self.resolved, provider, result, self.progress, self.deadline)
            saved = save_after_pulls(provider, name, result.models, self.progress)
            if saved:
                result.notes.append(saved)
            return result

    def clean_up(self, exc: BaseException, *, keep: bool) -> None:
        """Give the lease back and stop what this up started, unless another job holds it
        now; say what was done, and where the server's log is."""
        cancelled = not isinstance(exc, Exception)
        try:
            if self.taker is not None:
                self.taker.release()
            outcome = self._stop_what_it_started(keep=keep, cancelled=cancelled)
        except Exception as failure:  # the cleanup of a failure must not hide the failure
            outcome = f"cleaning up failed too ({failure}); run 'ondemand down' to stop it"
        where = self.provider.log_hint(self.last) if self.last is not None else None
        notes = [f"Afterwards: {outcome}"] if outcome else []
        if where and where not in str(exc):
            notes.append(f"Server log: {where}")
        if isinstance(exc, OndemandError):
            exc.notes.extend(notes)
        else:
            for note in notes:
                self.progress(note)

    def _stop_what_it_started(self, *, keep: bool, cancelled: bool) -> str:
        from ondemand.leasing import check_stop, stopping_after
        from ondemand.lifecycle.down import stop_and_verify

        provider, name = self.provider, self.name
        state = provider.status(name)
        if not state.status.billable:
            return ""
        if not self.started_here:
            return f"{name} is left as it was: it was already running when this up began"
        if keep:
            return (
                f"{name} is kept running for debugging (--keep-on-failure); "
                "'ondemand down' stops it"
            )
        config = self.resolved.config
        check = check_stop(
            state, admin_key=admin_key(self.resolved, provider, name),
            headers=provider.gateway_headers(), lease_ids=[], holder=None,
            drain_seconds=60, max_lifetime_seconds=config.max_lifetime.total_seconds(),
        )  # fmt: skip
        if not check.stop and check.holders:
            return f"{name} is left running for the job(s) holding it: {', '.join(check.holders)}"
        with stopping_after(check.drained_via):
            if cancelled:
                # Cancelled runs get seconds before they are killed: ask, do not wait.
                provider.stop(name)
                return f"asked {provider.name} to stop {name}, which this up had started"
            stop_and_verify(self.resolved, provider)
        return (
            f"stopped {name} again: this up had started it (--keep-on-failure keeps it "
            "for debugging)"
        )


def start_and_wait(
    resolved: ResolvedConfig,
    provider: Provider,
    current: Deployment,
    *,
    wait: bool,
    progress: Progress,
    announce: Announce = no_announce,
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
    on_its_way = current.status in SERVING
    deployment = current if on_its_way else start_once(provider, name)
    # The provider's remarks about a running deployment (e.g. the emulator in use); its
    # state messages on the way there are part of the progress lines below.
    running = deployment.status is Status.RUNNING
    notes = [deployment.detail] if deployment.detail and running else []
    for note in notes:
        progress(note)
    api_key = user_key(resolved, provider, name)
    if deployment.url:
        announce(deployment)
    if not wait:
        return UpResult(deployment, deployment.url or "", api_key, reused, 0.0, 0.0, notes=notes)
    waiting = ReadyWait(
        provider, name, api_key=api_key, progress=progress, announce=announce,
        announced=bool(deployment.url), taker=taker,
    )  # fmt: skip
    try:
        waited = waiting.wait(max(0.0, deadline - time.monotonic()))
    except ReadyTimeoutError as exc:
        better = _timed_out(resolved, provider, exc)
        if better is exc:
            raise
        raise better from exc
    finished = time.monotonic()
    first = waiting.first_answer or finished
    return UpResult(
        deployment=waited.deployment,
        url=waited.deployment.url or "",
        api_key=api_key,
        reused=reused,
        seconds_to_start=first - began,
        seconds_to_warm=finished - first,
        models=list(waited.readiness.server.get("models") or []),
        notes=notes,
    )


def _timed_out(resolved: ResolvedConfig, provider: Provider, exc: ReadyTimeoutError) -> Exception:
    name = resolved.config.name
    # The budget is the whole 'up' (restarts included), as the user set it.
    exc.message = (
        f"timed out after {resolved.config.timeout.total_seconds():g}s waiting for "
        f"{name} to be ready"
    )
    last = provider.status(name)
    better = provider.explain_timeout(last)
    if better is not None:
        return better
    where = provider.log_hint(last)
    exc.hint = "raise --timeout (ONDEMAND_TIMEOUT), and check the server log" + (
        f" ({where})" if where else ""
    )
    return exc


def start_once(provider: Provider, name: str) -> Deployment:
    """Start it; when another job's start won the race (the vendor refuses a second
    start), go on with the start already under way."""
    try:
        return provider.start(name)
    except ProviderError:
        now = provider.status(name)
        if now.status in SERVING:
            return now
        raise
