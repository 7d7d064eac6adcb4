"""``status``: the provider's view of the deployment plus the server's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ondemand.lifecycle.deployment import admin_key, user_key
from ondemand.lifecycle.down import run_cost
from ondemand.lifecycle.readiness import read_readiness
from ondemand.providers.base import Status

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.providers.base import Deployment, Provider


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
    sync = provider.model_cache_sync(name) if deployment.status is not Status.ABSENT else None
    if sync is not None:
        report["cache_sync"] = sync.to_json()
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
        if deployment.replicas:
            report["replicas"] = _replicas(resolved, provider, deployment)
    return report


def _replicas(
    resolved: ResolvedConfig, provider: Provider, deployment: Deployment
) -> list[dict[str, Any]]:
    """Each replica's own activity: one answers each request, so one view is not all."""
    from ondemand.fleet import Fleet

    key = admin_key(resolved, provider, resolved.config.name)
    if key is None or deployment.url is None:
        return []
    with Fleet(
        deployment.url, key, provider.gateway_headers(), replicas=deployment.replicas
    ) as fleet:
        sweep = fleet.each(lambda api: api.status())
    views = []
    for replica, answer in sorted(sweep.latest().items()):
        body = answer.body
        leases = body.get("leases") if isinstance(body.get("leases"), dict) else {}
        views.append(
            {
                "replica": replica,
                "ready": body.get("ready"),
                "inflight": body.get("inflight"),
                "requests": body.get("requests"),
                "leases": (leases or {}).get("live"),
                "draining": body.get("draining"),
            }
        )
    return views
