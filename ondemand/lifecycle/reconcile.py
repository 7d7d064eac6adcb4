"""Making a running deployment match the config, for an ``up`` that finds it running.

- Image, GPU or environment changed (or the server is unhealthy): redeploy, but only
  when no other job holds a lease; otherwise say so, name the holders, and use what runs.
- Models added to the list: pulled and warmed on the running server (every replica)
  through its admin API before ``up`` reports ready, with no restart.
- Models removed: they stay loaded until the server stops; the next start preloads only
  the list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ondemand.errors import ReadyTimeoutError, UnhealthyError
from ondemand.lifecycle.deployment import admin_key, user_key, wanted_spec
from ondemand.lifecycle.readiness import describe_models, read_readiness
from ondemand.modelnames import canonical

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.fleet import Fleet
    from ondemand.lifecycle.deployment import Progress
    from ondemand.lifecycle.up import UpResult
    from ondemand.providers.base import Deployment, Provider


@dataclass
class Drift:
    redeployed: bool  # it was stopped, to start again from the config
    notes: list[str] = field(default_factory=list)


def redeploy_if_changed(
    resolved: ResolvedConfig,
    provider: Provider,
    current: Deployment,
    holder: str,
    progress: Progress,
) -> Drift:
    from ondemand.leasing import check_stop, stopping_after, wait_for_requests
    from ondemand.lifecycle.down import stop_and_verify

    name = resolved.config.name
    changes = provider.spec_changes(wanted_spec(resolved, provider, image=current.image))
    failed: list[str] = []
    if current.url and not provider.probe_would_wake(current):
        ready = read_readiness(
            current.url, user_key(resolved, provider, name), provider.gateway_headers()
        )
        if ready.failed:
            failed = list(ready.server.get("problems") or [str(ready)])
    if not changes and not failed:
        return Drift(False)
    why = (
        f"it is unhealthy ({'; '.join(failed)})"
        if failed
        else f"its config changed since it started ({'; '.join(changes)})"
    )
    config = resolved.config
    # This holder's own earlier lease does not count: its new one replaces it.
    check = check_stop(
        current, admin_key=admin_key(resolved, provider, name),
        headers=provider.gateway_headers(), lease_ids=[], holder=holder,
        drain_seconds=config.timeout.total_seconds() + 60,
        max_lifetime_seconds=config.max_lifetime.total_seconds(),
    )  # fmt: skip
    if check.stop:
        progress(f"{name}: {why}: restarting it with the config, as no other job holds it")
        with stopping_after(check.drained_via):
            wait_for_requests(
                check, timeout=config.drain_timeout.total_seconds(), progress=progress
            )
            stop_and_verify(resolved, provider)
        return Drift(True)
    held = check.message.removeprefix("kept running: ")
    if failed:
        raise UnhealthyError(
            f"{name} is unhealthy ({'; '.join(failed)}), and it is not restarted: {held}",
            hint="once those jobs are done, 'ondemand up' restarts it with the config",
        )
    note = (
        f"{why}, but it is not redeployed under others: {held}. Using what runs; the first "
        "'up' that finds no other job holding it redeploys it"
    )
    progress(f"warning: {note}")
    return Drift(False, [note])


def add_models(
    resolved: ResolvedConfig,
    provider: Provider,
    result: UpResult,
    progress: Progress,
    deadline: float,
) -> None:
    """Pull and warm the configured models a running server lacks, on every replica, and
    wait until they are warm; say what happens to models no longer configured."""
    from ondemand.fleet import Fleet

    name = resolved.config.name
    wanted = {canonical(m): m for m in resolved.config.models}
    key = admin_key(resolved, provider, name)
    deployment = result.deployment
    if not deployment.url or key is None or provider.probe_would_wake(deployment):
        return
    with Fleet(
        deployment.url, key, provider.gateway_headers(), replicas=deployment.replicas
    ) as fleet:
        servers = _models_by_replica(fleet)
        if servers is None:
            return  # the servers cannot say: leave them as they are
        removed = sorted({m for models in servers.values() for m in models} - set(wanted))
        if removed:
            note = (
                f"no longer configured: {', '.join(removed)}: loaded until {name} stops; "
                "its next start preloads only the configured models"
            )
            progress(note)
            result.notes.append(note)
        missing = [m for k, m in wanted.items() if any(k not in s for s in servers.values())]
        if not missing:
            return
        progress(f"{name}: adding {', '.join(missing)} to the running server (no restart)")
        fleet.each(lambda api: api.add_models(missing))
        result.models = _wait_warm(fleet, name, list(wanted), progress, deadline)


def _models_by_replica(fleet: Fleet) -> dict[str, dict[str, dict[str, Any]]] | None:
    """Each replica's models by canonical name; None when some replica cannot say."""
    sweep = fleet.each(lambda api: api.status())
    if not sweep.complete or not all(a.ok for a in sweep.answers):
        return None
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for replica, answer in sweep.latest().items():
        server = answer.body.get("server")
        listed = server.get("models") if isinstance(server, dict) else None
        if not isinstance(listed, list):
            return None  # not 'ondemand serve': it does not manage its models
        models[replica] = {canonical(str(m.get("name"))): m for m in listed if isinstance(m, dict)}
    return models


def _wait_warm(
    fleet: Fleet, name: str, wanted: list[str], progress: Progress, deadline: float
) -> list[dict[str, Any]]:
    shown: set[str] = set()
    while True:
        servers = _models_by_replica(fleet) or {}
        views = [m for models in servers.values() for m in models.values()]
        for line in describe_models({"models": views}):
            if line not in shown:
                shown.add(line)
                progress(f"  {line}")
        keys = {canonical(m) for m in wanted}
        failed = [
            m for m in views
            if m.get("phase") == "failed" and canonical(str(m.get("name"))) in keys
        ]  # fmt: skip
        if failed:
            problems = "; ".join(f"{m.get('name')}: {m.get('error')}" for m in failed)
            raise UnhealthyError(
                f"{name}: a model could not be added: {problems}",
                cause="the name is not in the registry, or it does not fit the GPU's memory",
                hint="fix the model list, then run 'ondemand up' again (the models already "
                "warm stay in service meanwhile)",
            )
        warm = servers and all(
            models.get(k, {}).get("phase") == "warm" for models in servers.values() for k in keys
        )
        if warm:
            return list(next(iter(servers.values())).values())
        if time.monotonic() >= deadline:
            raise ReadyTimeoutError(
                f"timed out waiting for {name} to warm the added models",
                hint="raise --timeout (ONDEMAND_TIMEOUT); 'ondemand status' shows each model",
            )
        time.sleep(0.2)
