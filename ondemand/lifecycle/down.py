"""``down``, ``stop`` and ``delete``: give this job's lease back, stop the deployment when
nothing else needs it, verify the stop, and say what it cost."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ondemand.errors import ProviderError, ReadyTimeoutError
from ondemand.lifecycle.deployment import admin_key, quiet
from ondemand.providers.base import Status, wait_until

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.lifecycle.deployment import Progress
    from ondemand.providers.base import Deployment, Provider
    from ondemand.providers.costs import Estimate


# How long a cleanup kept by other leases waits before it looks again: long enough for a
# cleanup that ended with it to have released its lease on every replica.
SECOND_LOOK_SECONDS = 1.0


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


def down(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    delete_after: bool = False,
    force: bool = False,
    lease_ids: list[str] | None = None,
    holder: str | None = None,
    progress: Progress = quiet,
) -> DownResult:
    """Release this job's leases (``lease_ids``, and every lease of ``holder``) and stop
    the deployment when the servers agree no lease is left (or ``force``): requests still
    in flight get ``drain_timeout`` to end, new leases being refused meanwhile. Verify the
    stop. Absent or stopped is success."""
    from ondemand.leasing import StopCheck, check_stop, stopping_after, wait_for_requests
    from ondemand.lifecycle.cache import finish_cache_sync

    config = resolved.config
    name = config.name
    lease_ids = lease_ids or []
    before = provider.status(name)
    was_running = before.status.billable
    if before.status is Status.ABSENT:
        return DownResult(before, False, f"nothing to stop: there is no deployment named {name!r}")
    # No worker up (a serverless endpoint at zero): asking the server would start one.
    asleep = provider.probe_would_wake(before)
    if was_running and not force and not delete_after and provider.ephemeral_servers:
        return _let_scale_to_zero(resolved, provider, before, lease_ids, asleep=asleep)
    check = StopCheck(True, "")
    drain_seconds = config.drain_timeout.total_seconds()
    if was_running and not force:
        # Looked up once: the admin key may come from the provider (the deployment's env).
        key, headers = admin_key(resolved, provider, name), provider.gateway_headers()

        def ask(leases: list[str]) -> StopCheck:
            return check_stop(
                before,
                admin_key=key,
                headers=headers,
                lease_ids=leases,
                holder=holder,
                # Long enough for the wait below and the stop; a killed cleanup blocks no
                # one for longer.
                drain_seconds=drain_seconds + config.timeout.total_seconds() + 60,
                max_lifetime_seconds=config.max_lifetime.total_seconds(),
                server_absent=asleep,
            )

        check = ask(lease_ids)
        if not check.stop and check.holders:
            # Cleanups that end together (a matrix's jobs) each release their lease and
            # may each see another's on a replica the other has not reached yet: all keep
            # the app, and nobody stops it. A second look, once their releases have landed,
            # finds none (releasing again changes nothing; docs/safety.md).
            time.sleep(SECOND_LOOK_SECONDS)
            first = check
            gone = {str(lease.get("id")) for lease in first.released}
            check = ask([i for i in lease_ids if i not in gone])
            check.released = [*first.released, *check.released]
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
    waited = ""
    with stopping_after(check.drained_via):
        waited = wait_for_requests(check, timeout=drain_seconds, progress=progress)
        cached = (
            finish_cache_sync(
                provider, name, timeout=config.timeout.total_seconds(), progress=progress
            )
            if was_running
            else None
        )
        after = stop_and_verify(resolved, provider) if was_running else before
    if delete_after:
        provider.delete(name)
        after = dataclasses.replace(after, status=Status.ABSENT)
    message = f"stopped {name}" if was_running else f"{name} was already stopped"
    if was_running and check.message:
        message += f" ({check.message}{waited})"
    if cached:
        message += f"; {cached}"
    if delete_after:
        kept = provider.kept_after_delete()
        message += f"; deployment deleted ({kept})" if kept else "; deployment deleted"
    elif note := provider.stopped_note():
        # Stopped is not always free (a pod's disk, the model cache): say so where it is
        # decided.
        message += f"; {note}"
    return DownResult(after, was_running, message, cost, share=share, released=check.released)


def _let_scale_to_zero(
    resolved: ResolvedConfig,
    provider: Provider,
    before: Deployment,
    lease_ids: list[str],
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
    if lease_ids and key and before.url and not asleep:
        with ServerApi(before.url, key, provider.gateway_headers(), timeout=10) as api:
            for lease_id in lease_ids:
                answer = api.release(lease_id)
                if answer.ok and isinstance(answer.body.get("lease"), dict):
                    released.append(answer.body["lease"])
    idle = provider.scale_to_zero(name)
    message = (
        f"{name}: left to scale to zero: each worker stops {idle}s after its last request, "
        "and none serving a request is cut off ('ondemand down --force' stops it now)"
    )
    # A worker bills until it has stopped: idle_timeout after this run's last request.
    share = _share(resolved, provider, released, after=float(idle or 0))
    return DownResult(before, True, message, share=share, released=released, scales_to_zero=True)


def _share(
    resolved: ResolvedConfig,
    provider: Provider,
    released: list[dict[str, Any]],
    after: float = 0.0,
) -> Estimate | None:
    """This run's share of the bill: how long its lease was held, by the server's clock,
    plus what still bills ``after`` it (a worker's idle timeout)."""
    from ondemand.providers.costs import for_seconds

    if not released:
        return None
    config = resolved.config
    held = sum(float(lease.get("held_seconds") or 0) for lease in released) + after
    return for_seconds(provider.name, held, config.gpu, config.gpu_count, config.prices)


class _StopWatch:
    """Whether a deployment has stopped billing since the stop was asked. One that went on
    its way up again after being seen stopping did stop: another job's 'up' has started it
    since, and that job holds a lease on the new server."""

    def __init__(self, first: Deployment) -> None:
        self.seen_stopping = first.status is Status.STOPPING

    def stopped(self, deployment: Deployment) -> bool:
        restarted = self.seen_stopping and deployment.status in (
            Status.PENDING, Status.STARTING, Status.RUNNING
        )  # fmt: skip
        self.seen_stopping = self.seen_stopping or deployment.status is Status.STOPPING
        return not deployment.status.billable or restarted


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
    watch = _StopWatch(after)
    if watch.stopped(after):
        return after
    timeout = resolved.config.timeout.total_seconds()
    try:
        return wait_until(
            lambda: provider.status(name),
            watch.stopped,
            timeout=timeout,
            what=f"{name} to stop",
            interval=0.2,
            max_interval=2.0,
        )
    except ReadyTimeoutError as exc:
        # Not a wait for readiness: compute that does not stop is a provider problem, and
        # it may still be billing.
        last = provider.status(name)
        raise ProviderError(
            f"{name} did not stop: {provider.name} still reports it "
            f"{last.vendor_state or last.status.value} after {timeout:g}s",
            cause="the provider accepted the stop but has not finished it; until it does "
            "the compute may still bill",
            hint="run 'ondemand down' again (it is safe to repeat), or check the "
            "deployment in the provider's console",
        ) from exc


def run_cost(resolved: ResolvedConfig, provider: Provider, deployment: Deployment) -> Estimate:
    from ondemand.providers.costs import estimate

    config = resolved.config
    return estimate(
        provider.name, deployment.running_since, config.gpu, config.gpu_count, config.prices
    )


def delete(resolved: ResolvedConfig, provider: Provider) -> DownResult:
    """The explicit removal: whoever holds it (``down --delete`` keeps to the leases)."""
    return down(resolved, provider, delete_after=True, force=True)
