"""The lifecycle commands: deploy, start, stop, up, down, status, delete."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import click

from ondemand.cli.publish import (
    announced,
    github_deployments,
    published_down,
    published_status,
    published_up,
)
from ondemand.cli.root import App, cli, json_option, pass_app

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.lifecycle import UpResult
    from ondemand.providers.base import Provider


def _lifecycle(app: App, **flags: object) -> tuple[ResolvedConfig, Provider]:
    from ondemand.lifecycle import make_provider

    resolved = app.config(**flags)
    for secret in resolved.secrets.secret_values():
        app.actions.mask(secret)
    provider = make_provider(resolved, app.env)
    click.get_current_context().call_on_close(provider.close)
    return resolved, provider


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def _print_up(app: App, result: UpResult, provider: str) -> None:
    from ondemand.lifecycle import describe_models

    if result.api_key:
        app.actions.mask(result.api_key)
    models = describe_models({"models": result.models})
    data = {
        "url": result.url,
        "openai_url": result.openai_url,
        "api_key": result.api_key,
        "status": "ready",
        "deployment_id": result.deployment.id,
        "provider": provider,
        "reused": result.reused,
        "seconds_to_start": round(result.seconds_to_start, 3),
        "seconds_to_warm": round(result.seconds_to_warm, 3),
        "models": result.models,
        "notes": result.notes,
        "lease_id": result.lease.id if result.lease else None,
        "lease_expires_at": result.lease.expires_at if result.lease else None,
    }
    if app.as_json:
        app.emit(data, "")
        return
    how = "already running" if result.reused else (
        f"server {_seconds(result.seconds_to_start)}, models warm "
        f"{_seconds(result.seconds_to_warm)} later"
    )  # fmt: skip
    app.info(f"ready: {result.url} ({provider}; {how})")
    lines_lease = [f"ONDEMAND_LEASE_ID={result.lease.id}"] if result.lease else []
    if provider == "runpod":
        app.info(
            "  RunPod's gateway takes RUNPOD_API_KEY as 'Authorization: Bearer'; send the key "
            "below as 'X-API-Key' (docs/runpod.md)"
        )
        app.info(
            "  it is the endpoint's own key, not a per-run one: a worker that scales to zero "
            "takes per-run keys with it (docs/safety.md)"
        )
    for line in models:
        app.info(f"  {line}")
    if result.lease is not None:
        hours = result.lease.expires_in_seconds / 3600
        app.info(f"  lease {result.lease.id} ({result.lease.holder}), {hours:.1f} h; "
                 "'ondemand down' releases it")  # fmt: skip
    elif result.lease_problem:
        app.info(f"  warning: no lease taken ({result.lease_problem}); another job's "
                 "'down' may stop this server under you")  # fmt: skip
    lines = [f"OLLAMA_HOST={result.url}", f"OPENAI_BASE_URL={result.openai_url}"]
    if result.api_key:
        lines += [f"OLLAMA_API_KEY={result.api_key}", f"OPENAI_API_KEY={result.api_key}"]
    app.emit(data, "\n".join(lines + lines_lease))


@cli.command()
@json_option
@click.option("--image", help="Server image to deploy. [env: ONDEMAND_IMAGE]")
@click.option("--models", help="Models to preload, comma-separated. [env: ONDEMAND_MODELS]")
@click.option("--gpu", help="GPU model, e.g. L4. [env: ONDEMAND_GPU, GPU_MODEL]")
@pass_app
def deploy(app: App, image: str | None, models: str | None, gpu: str | None) -> None:
    """Create the deployment, or update it when its spec changed. Idempotent; prints state.

    Recreates only when the provider cannot update in place, and never touches the model
    cache volume.
    """
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app, image=image, models=models, gpu=gpu)
    deployment = lifecycle.deploy(resolved, provider)
    state = deployment.vendor_state or deployment.status.value
    human = f"deployed {deployment.name} ({provider.name}): {deployment.detail or 'done'}; {state}"
    if deployment.url:
        human += f"; url {deployment.url}"
    app.emit(
        {
            "deployment_id": deployment.id,
            "status": deployment.status.value,
            "state": state,
            "url": deployment.url,
            "change": deployment.detail,
        },
        human,
    )


@cli.command()
@json_option
@click.option("--no-wait", is_flag=True, help="Return once the provider accepted the start.")
@click.option("--timeout", help="How long to wait for ready, e.g. 15m. [env: ONDEMAND_TIMEOUT]")
@pass_app
def start(app: App, no_wait: bool, timeout: str | None) -> None:
    """Start the deployment (the provider's raw start) and wait until it is ready."""
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app, timeout=timeout)
    result = lifecycle.start(
        resolved, provider, wait=not no_wait, progress=app.info, announce=announced(app)
    )
    if no_wait:
        app.emit(
            {"deployment_id": result.deployment.id, "status": result.deployment.status.value},
            f"starting {result.deployment.name} ({provider.name})",
        )
        return
    _print_up(app, result, provider.name)
    published_up(app, result, provider.name, resolved.config.name)


@cli.command()
@json_option
@click.option("--timeout", help="How long to wait for the provider to report it stopped.")
@pass_app
def stop(app: App, timeout: str | None) -> None:
    """Stop the deployment (the provider's raw stop) and verify it stopped billing compute."""
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app, timeout=timeout)
    # The seed script's raw stop: no lease is asked (that is 'down').
    result = lifecycle.down(resolved, provider, force=True)
    app.emit({"status": result.deployment.status.value, "stopped": result.was_running},
             result.message)  # fmt: skip
    published_down(app, result, provider.name, resolved.config.name)
    if (github := github_deployments(app, resolved, provider.name)) is not None:
        github.stopped(result.message)


@cli.command()
@json_option
@click.option("--timeout", help="How long to wait for ready. [env: ONDEMAND_TIMEOUT; 15m]")
@click.option("--lease-ttl", help="How long the lease lives. [env: ONDEMAND_LEASE_TTL; 3h]")
@pass_app
def up(app: App, timeout: str | None, lease_ttl: str | None) -> None:
    """Before tests: deploy if missing, start, wait until models are warm, take a lease.

    Prints OLLAMA_HOST, OPENAI_BASE_URL and the key as KEY=value lines on stdout (progress
    goes to stderr), so 'ondemand up > .env' works; in GitHub Actions the key is masked.
    A second 'up' while the server runs reuses it.
    """
    from ondemand import lifecycle
    from ondemand.serverapi import holder_name

    resolved, provider = _lifecycle(app, timeout=timeout, lease_ttl=lease_ttl)
    name = resolved.config.name
    app.info(f"starting {name} on {provider.name}...")
    github = github_deployments(app, resolved, provider.name)
    if github:
        github.started(f"starting {name} on {provider.name}")
    try:
        result = lifecycle.up(
            resolved, provider, progress=app.info, announce=announced(app),
            holder=holder_name(app.env),
        )  # fmt: skip
    except Exception as exc:
        if github:
            github.failed(f"{name} did not become ready: {exc}")
        raise
    if github:
        github.ready(result.url, f"{name} is ready on {provider.name}")
    _print_up(app, result, provider.name)
    published_up(app, result, provider.name, name)


@cli.command()
@json_option
@click.option("--lease", "lease_id", help="Lease to release (default: this job's lease).")
@click.option("--force", is_flag=True, help="Stop even if other leases are live.")
@click.option("--delete", "delete_after", is_flag=True, help="Delete it after stopping it.")
@pass_app
def down(app: App, lease_id: str | None, force: bool, delete_after: bool) -> None:
    """After tests: release the lease; stop only when no live lease remains.

    Verifies the stop and prints the estimated cost. Never fails a cleanup step because
    the deployment is already stopped or gone.
    """
    from ondemand import lifecycle
    from ondemand.serverapi import holder_name

    resolved, provider = _lifecycle(app)
    result = lifecycle.down(
        resolved,
        provider,
        delete_after=delete_after,
        force=force,
        lease_id=lease_id or app.env.get("ONDEMAND_LEASE_ID") or None,
        holder=holder_name(app.env),
    )
    data: dict[str, object] = {
        "status": result.deployment.status.value,
        "stopped": result.was_running and not result.kept and not result.scales_to_zero,
        "kept": result.kept,
        "scales_to_zero": result.scales_to_zero,
        "released": [lease.get("id") for lease in result.released],
        "holders": result.holders,
    }
    human = result.message
    if (share := result.share) is not None:
        data["share"] = {"seconds": round(share.seconds, 1), "amount": share.amount,
                         "currency": share.currency}  # fmt: skip
        human += f"\n  this run's share: {share.describe()}"
    app.emit(data, human)
    published_down(app, result, provider.name, resolved.config.name)
    if result.kept:
        return  # still serving other jobs: their GitHub Deployment stays active
    if (github := github_deployments(app, resolved, provider.name)) is not None:
        github.stopped(result.message)


@cli.command()
@json_option
@pass_app
def status(app: App) -> None:
    """Provider state, URL, readiness, models (GPU or CPU), activity, leases, cost."""
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app)
    report = lifecycle.status(resolved, provider)
    app.emit(report, _status_text(report))
    published_status(app, report)


def _status_text(report: Mapping[str, object]) -> str:
    from ondemand.lifecycle import describe_models

    state = str(report["status"])
    if report.get("ready") is not None:
        state += ", ready" if report["ready"] else f", not ready (/ping {report.get('ping')})"
    lines = [f"{report['name']} ({report['provider']}): {state}"]
    if report.get("url"):
        lines.append(f"  url: {report['url']}")
    if report.get("detail"):
        lines.append(f"  note: {report['detail']}")
    cost = report.get("cost")
    if isinstance(cost, dict):
        lines.append(f"  cost: {cost['estimate']}")
    server = report.get("server")
    if isinstance(server, dict):
        inner = server.get("server")
        if isinstance(inner, dict):
            lines += [f"  {line}" for line in describe_models(inner)]
        activity = f"  in flight: {server.get('inflight')}, requests: {server.get('requests')}"
        idle, uptime = server.get("idle_seconds"), server.get("uptime_seconds")
        if isinstance(idle, float | int):
            activity += f", idle {idle:.0f}s"
        if isinstance(uptime, float | int):
            activity += f", up {uptime:.0f}s"
        lines.append(activity)
        leases = server.get("leases")
        if isinstance(leases, dict):
            text = f"  leases: {leases.get('live', 0)} live"
            if server.get("draining"):
                text += " (draining: being stopped, new leases are refused)"
            lines.append(text)
    return "\n".join(lines)


@cli.command()
@json_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def delete(app: App, yes: bool) -> None:
    """Remove the deployment (never the model cache volume or bucket)."""
    from ondemand import lifecycle

    del yes  # nothing interactive yet: deleting keeps the model cache
    resolved, provider = _lifecycle(app)
    result = lifecycle.delete(resolved, provider)
    app.emit({"status": "absent", "was_running": result.was_running}, result.message)
    published_down(app, result, provider.name, resolved.config.name)
    if (github := github_deployments(app, resolved, provider.name)) is not None:
        github.stopped(result.message)
