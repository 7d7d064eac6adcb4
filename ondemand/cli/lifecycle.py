"""The lifecycle commands: deploy, start, stop, up, down, status, delete."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import click

from ondemand.cli.publish import (
    announced,
    github_deployments,
    published_down,
    published_status,
    published_up,
)
from ondemand.cli.root import App, cli, pass_app

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


# Deploy's options, which 'up' takes too (it deploys what is missing).
deploy_options = [
    click.option("--image", help="Server image to deploy. [env: ONDEMAND_IMAGE]"),
    click.option("--models", help="Models to preload, comma-separated. [env: ONDEMAND_MODELS]"),
    click.option("--gpu", help="GPU model, e.g. L4. [env: ONDEMAND_GPU, GPU_MODEL]"),
]


def with_deploy_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(deploy_options):
        command = option(command)
    return command


@cli.command()
@with_deploy_options
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
    published_up(app, result, provider.name, resolved.config.name, provider.client_env())


@cli.command()
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
@with_deploy_options
@click.option("--timeout", help="How long to wait for ready. [env: ONDEMAND_TIMEOUT; 15m]")
@click.option("--lease-ttl", help="How long the lease lives. [env: ONDEMAND_LEASE_TTL; 3h]")
@click.option("--holder", help="Who holds the lease. [env: ONDEMAND_LEASE_HOLDER; default: "
              "the job in Actions, user@host/name elsewhere]")  # fmt: skip
@click.option("--keep-on-failure", is_flag=True,
              help="If up fails, keep what it started running, for debugging.")  # fmt: skip
@pass_app
def up(
    app: App,
    image: str | None,
    models: str | None,
    gpu: str | None,
    timeout: str | None,
    lease_ttl: str | None,
    holder: str | None,
    keep_on_failure: bool,
) -> None:
    """Before tests: deploy if missing, start, wait until models are warm, take a lease.

    Prints OLLAMA_HOST, OPENAI_BASE_URL and the key as KEY=value lines on stdout (progress
    goes to stderr), so 'ondemand up > .env' works; in GitHub Actions the key is masked.
    A second 'up' while the server runs reuses it, adding models the list gained; a failed
    or cancelled 'up' stops what it started unless another job holds it.
    """
    from ondemand import lifecycle
    from ondemand.holders import LeaseRecords, holder_name

    resolved, provider = _lifecycle(
        app, image=image, models=models, gpu=gpu, timeout=timeout, lease_ttl=lease_ttl
    )
    name = resolved.config.name
    holder = holder or holder_name(app.env, name)
    app.info(f"starting {name} on {provider.name}...")
    github = github_deployments(app, resolved, provider.name)
    if github:
        github.started(f"starting {name} on {provider.name}")
    try:
        with _cancel_on_signals():
            result = lifecycle.up(
                resolved, provider, progress=app.info, announce=announced(app),
                holder=holder, keep_on_failure=keep_on_failure,
            )  # fmt: skip
    except BaseException as exc:
        if github:
            github.failed(f"{name} did not become ready: {exc or 'cancelled'}")
        raise
    if result.lease is not None:
        LeaseRecords(app.env, provider.name, name).add(
            result.lease.id, result.lease.holder, result.lease.expires_in_seconds
        )
    if github:
        github.ready(result.url, f"{name} is ready on {provider.name}")
    _print_up(app, result, provider.name)
    published_up(app, result, provider.name, name, provider.client_env())


@contextlib.contextmanager
def _cancel_on_signals() -> Iterator[None]:
    """A cancelled workflow run sends SIGINT, then SIGTERM a few seconds later: both end a
    waiting 'up' the same way, so it cleans up after itself before it is killed. SIGINT is
    handled even where the parent left it ignored (a shell starts a background `ondemand up
    &` so, and Python then installs no handler), or the cleanup would wait for SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, cancel) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@cli.command()
@click.option(
    "--lease",
    "lease_id",
    help="Release this lease only. [env: ONDEMAND_LEASE_ID; "
    "default: the leases of this holder, and those 'up' took from this machine]",
)
@click.option(
    "--holder",
    help="Release the leases of this holder. [env: "
    "ONDEMAND_LEASE_HOLDER; default: the job in Actions, user@host/name elsewhere]",
)
@click.option("--force", is_flag=True, help="Stop even if other leases are live.")
@click.option(
    "--drain-timeout",
    help="How long requests in flight may finish before the "
    "stop. [env: ONDEMAND_DRAIN_TIMEOUT; 2m]",
)
@click.option("--delete", "delete_after", is_flag=True, help="Delete it after stopping it.")
@pass_app
def down(
    app: App,
    lease_id: str | None,
    holder: str | None,
    force: bool,
    drain_timeout: str | None,
    delete_after: bool,
) -> None:
    """After tests: release the lease; stop once no live lease remains.

    Requests still in flight get --drain-timeout to end (new leases are refused meanwhile),
    then it stops, verifies the stop and prints the estimated cost. When others hold it,
    it names them. Never fails a cleanup step because the deployment is already stopped or
    gone.
    """
    from ondemand import lifecycle
    from ondemand.holders import LeaseRecords, holder_name

    resolved, provider = _lifecycle(app, drain_timeout=drain_timeout)
    name = resolved.config.name
    records = LeaseRecords(app.env, provider.name, name)
    lease_id = lease_id or app.env.get("ONDEMAND_LEASE_ID", "").strip() or None
    if lease_id:
        # The job's own lease, by id: nothing else of a holder that another run shares.
        lease_ids, release_holder = [lease_id], None
    else:
        release_holder = holder or holder_name(app.env, name)
        lease_ids = records.ids(release_holder)
    result = lifecycle.down(
        resolved,
        provider,
        delete_after=delete_after,
        force=force,
        lease_ids=lease_ids,
        holder=release_holder,
        progress=app.info,
    )
    records.forget([*lease_ids, *(str(x.get("id")) for x in result.released)])
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
    published_down(app, result, provider.name, name)
    if result.kept:
        return  # still serving other jobs: their GitHub Deployment stays active
    if (github := github_deployments(app, resolved, provider.name)) is not None:
        github.stopped(result.message)


@cli.command()
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
    sync = report.get("cache_sync")
    if isinstance(sync, dict):
        text = f"  model cache push to {sync.get('to')}: {sync.get('state')}"
        if sync.get("detail"):
            text += f" ({sync['detail']})"
        lines.append(text)
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
    replicas = report.get("replicas")
    if isinstance(replicas, list) and replicas:
        lines.append(f"  replicas: {len(replicas)}")
        for view in replicas:
            lines.append(
                f"    {view.get('replica')}: {'ready' if view.get('ready') else 'not ready'}, "
                f"in flight {view.get('inflight')}, requests {view.get('requests')}"
            )
    return "\n".join(lines)


@cli.command()
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
