"""The backstops: ``watchdog`` for one deployment, ``reap`` for every managed one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from ondemand.cli.lifecycle import _lifecycle
from ondemand.cli.publish import github_deployments, published_backstop
from ondemand.cli.root import App, cli, pass_app

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.watchdog import Verdict


def _seconds(text: str, flag: str) -> float:
    from ondemand.configtypes import parse_duration
    from ondemand.errors import UsageError

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(
            f"{flag}: {text!r} is not a duration", hint="write e.g. 90s, 30m or 12h"
        ) from exc


def _mark_inactive(
    app: App, resolved: ResolvedConfig, verdicts: list[Verdict], provider: str
) -> None:
    for verdict in verdicts:
        if verdict.action != "stopped":
            continue
        github = github_deployments(app, resolved, provider, verdict.name)
        if github is not None:
            github.stopped(verdict.line())


@cli.command()
@click.option("--idle", help="Stop after this long without requests, e.g. 30m. "
              "[env: ONDEMAND_IDLE_TIMEOUT; 30m]")  # fmt: skip
@click.option("--max-lifetime", help="Stop when running longer than this, whatever its "
              "leases, e.g. 8h. [env: ONDEMAND_MAX_LIFETIME; 8h]")  # fmt: skip
@click.option("--once", is_flag=True, help="Check once and exit (for cron).")
@click.option("--interval", default="60s", show_default=True, help="Time between checks.")
@pass_app
def watchdog(
    app: App, idle: str | None, max_lifetime: str | None, once: bool, interval: str
) -> None:
    """Stop the deployment when idle with no live lease, or past its max lifetime.

    A live lease, a request in flight, or an activity read that fails keeps it running;
    only the max lifetime stops a server that cannot be asked.
    """
    from ondemand.watchdog import watch_once

    every = _seconds(interval, "--interval")
    # Checked here so the message names the flag the user typed, not the config key.
    for flag, value in (("--idle", idle), ("--max-lifetime", max_lifetime)):
        if value is not None:
            _seconds(value, flag)
    resolved, provider = _lifecycle(app, idle_timeout=idle, max_lifetime=max_lifetime)
    config = resolved.config
    while True:
        verdict = watch_once(
            resolved,
            provider,
            idle_seconds=config.idle_timeout.total_seconds(),
            max_lifetime_seconds=config.max_lifetime.total_seconds(),
        )
        if once or verdict.action == "stopped":
            break
        app.info(verdict.line())
        time.sleep(every)
    app.emit(verdict.view(), verdict.line())
    published_backstop(app, "watchdog", [verdict])
    if (
        verdict.action == "stopped"
        and (github := github_deployments(app, resolved, provider.name)) is not None
    ):
        github.stopped(verdict.line())


@cli.command()
@click.option("--older-than", default="12h", show_default=True,
              help="Stop lease-less deployments running longer than this.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print what would be stopped; stop nothing.")
@pass_app
def reap(app: App, older_than: str, dry_run: bool) -> None:
    """Nightly backstop: stop every managed deployment running with no live lease.

    Looks at every deployment labelled managed-by=ollama-ondemand on the provider, across
    names; also stops those past their max lifetime or their expires-at label.
    """
    from ondemand.watchdog import reap as reap_all

    resolved, provider = _lifecycle(app)
    verdicts = reap_all(
        resolved, provider, older_than_seconds=_seconds(older_than, "--older-than"), dry_run=dry_run
    )
    lines = [verdict.line() for verdict in verdicts] or [
        f"no deployment labelled managed-by=ollama-ondemand on {provider.name}"
    ]
    saved = [v.saved_hourly for v in verdicts if v.saved_hourly]
    if saved and verdicts[0].cost is not None:
        verb = "would save" if dry_run else "saves"
        lines.append(f"{verb} {sum(saved):.2f} {verdicts[0].cost.currency}/h in all")
    app.emit({"dry_run": dry_run, "deployments": [v.view() for v in verdicts]},
             "\n".join(lines))  # fmt: skip
    published_backstop(app, "reap (dry run)" if dry_run else "reap", verdicts)
    _mark_inactive(app, resolved, verdicts, provider.name)
