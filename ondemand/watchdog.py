"""The backstops that stop what nobody stopped: ``watchdog`` (one deployment: idle with no
live lease, or past its max lifetime) and ``reap`` (every managed deployment of a provider:
running with no live lease past ``--older-than``).

What never stops a server: a live lease, a request in flight, or any doubt. An activity
read that fails counts as active; only the max lifetime overrides that, because a server
nobody can ask is billing for nothing. The idle decision itself is the server's (the same
drain step ``down`` uses), so a job taking a lease at that moment is never stopped under.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ondemand.providers.base import LABEL_EXPIRES_AT, Deployment, Status, parse_time

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.fleet import Fleet
    from ondemand.providers.base import Provider
    from ondemand.providers.costs import Estimate

Now = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Verdict:
    """What the backstop did to one deployment and why."""

    name: str
    state: str
    action: str  # "stopped", "kept", "idle" (nothing billing), "would stop" (dry run)
    reason: str
    age_seconds: float | None = None
    cost: Estimate | None = None  # billed so far, when it was running

    @property
    def saved_hourly(self) -> float | None:
        """What stopping it saves per hour from now on."""
        if self.action not in ("stopped", "would stop") or self.cost is None:
            return None
        return self.cost.hourly

    def view(self) -> dict[str, object]:
        cost = self.cost
        return {
            "name": self.name,
            "state": self.state,
            "action": self.action,
            "reason": self.reason,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
            "billed": None if cost is None else cost.amount,
            "currency": None if cost is None else cost.currency,
            "saves_per_hour": self.saved_hourly,
        }

    def line(self) -> str:
        text = f"{self.name}: {self.action} ({self.reason})"
        if self.cost is not None and self.action in ("stopped", "would stop"):
            text += f"; {self.cost.describe()}"
            if self.saved_hourly:
                verb = "saves" if self.action == "stopped" else "would save"
                text += f"; {verb} {self.saved_hourly:.2f} {self.cost.currency}/h"
        return text


def watch_once(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    idle_seconds: float,
    max_lifetime_seconds: float,
    name: str | None = None,
    older_than_seconds: float | None = None,
    dry_run: bool = False,
    now: Now = _utcnow,
    before_stop: Callable[[str], None] | None = None,
    verify: bool = True,
) -> Verdict:
    """Look at one deployment once; stop it when it is idle with no live lease (or, for
    the reaper, older than ``older_than_seconds`` with no live lease), or past its max
    lifetime."""
    from ondemand.leasing import check_drain, span, stopping_after
    from ondemand.lifecycle import admin_key, run_cost, stop_and_verify

    name = name or resolved.config.name
    deployment = provider.status(name)
    state = deployment.vendor_state or deployment.status.value
    if not deployment.status.billable:
        return Verdict(name, state, "idle", "nothing is billing")
    age = _age(deployment, now)
    cost = run_cost(resolved, provider, deployment)
    verdict = Verdict(name, state, "kept", "", age, cost)
    if provider.probe_would_wake(deployment):
        verdict.action, verdict.reason = "idle", "no worker is running (it scales to zero)"
        return verdict
    expires = parse_time(deployment.labels.get(LABEL_EXPIRES_AT))
    api: Fleet | None = None
    if age is not None and age > max_lifetime_seconds:
        reason = f"past its max lifetime: running {span(age)} > {span(max_lifetime_seconds)}"
    elif expires is not None and now() > expires:
        reason = f"past its {LABEL_EXPIRES_AT} label ({expires.isoformat()})"
    elif deployment.status is not Status.RUNNING or not deployment.url:
        verdict.reason = f"{state}: on its way up, never stopped on doubt"
        return verdict
    else:
        if older_than_seconds is not None and (age is None or age <= older_than_seconds):
            verdict.reason = f"running {span(age or 0)}, not past {span(older_than_seconds)}"
            return verdict
        idle = None if older_than_seconds is not None else idle_seconds
        drained, why, api = check_drain(
            deployment,
            admin_key(resolved, provider, name),
            provider.gateway_headers(),
            idle_seconds=idle,
            drain_seconds=resolved.config.timeout.total_seconds() + 60,
            reason="idle, no live lease (watchdog)" if idle else "no live lease (reaper)",
            dry_run=dry_run,
        )
        verdict.reason = why
        if not drained:
            return verdict
        reason = why
    if dry_run:
        verdict.action, verdict.reason = "would stop", reason
        return verdict
    if before_stop is not None:
        before_stop(reason)  # a server stopping itself may not live to tell afterwards
    with stopping_after(api):
        if verify:
            stop_and_verify(resolved, provider, name)
        else:
            provider.stop(name)
    verdict.action, verdict.reason = "stopped", reason
    return verdict


def reap(
    resolved: ResolvedConfig,
    provider: Provider,
    *,
    older_than_seconds: float,
    dry_run: bool = False,
    now: Now = _utcnow,
) -> list[Verdict]:
    """Every deployment labelled managed-by=ollama-ondemand on this provider, across names."""
    verdicts = []
    for deployment in provider.list_managed():
        verdicts.append(
            watch_once(
                resolved,
                provider,
                name=deployment.name,
                idle_seconds=0,
                max_lifetime_seconds=resolved.config.max_lifetime.total_seconds(),
                older_than_seconds=older_than_seconds,
                dry_run=dry_run,
                now=now,
            )
        )
    return verdicts


def _age(deployment: Deployment, now: Now) -> float | None:
    since = deployment.running_since
    return None if since is None else max(0.0, (now() - since).total_seconds())
