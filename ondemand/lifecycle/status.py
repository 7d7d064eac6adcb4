"""``status``: the provider's view of the deployment plus the server's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ondemand.lifecycle.deployment import user_key
from ondemand.lifecycle.down import run_cost
from ondemand.lifecycle.readiness import read_readiness
from ondemand.providers.base import Status

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.providers.base import Provider


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
    if deployment.status is Status.RUNNING and provider.probe_would_wake(deployment):
        # Asking would start a worker and its bill: report the provider's view only.
        report["ready"] = None
        report["note"] = "no worker is running: the next request starts one (cold start)"
    elif deployment.status is Status.RUNNING and deployment.url:
        key = user_key(resolved, provider, name)
        ready = read_readiness(deployment.url, key, provider.gateway_headers())
        report["ping"] = ready.ping
        report["ready"] = ready.ping == 200
        if ready.status:
            report["server"] = ready.status
    return report
