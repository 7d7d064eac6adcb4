"""Commands of later versions: registered with their help, they say they are not here yet."""

from __future__ import annotations

import click

from ondemand.cli.root import cli, later

# -- commands of later versions ---------------------------------------------------------


@cli.command()
@click.option("--idle", help="Stop after this long without requests, e.g. 30m.")
@click.option("--max-lifetime", help="Stop deployments older than this, e.g. 8h.")
@click.option("--once", is_flag=True, help="Check once and exit (for cron).")
def watchdog(**_options: object) -> None:
    """Stop the deployment when idle with no live lease, or past its max lifetime."""
    later("watchdog")


@cli.command()
@click.option("--older-than", help="Stop lease-less deployments running longer than this.")
@click.option("--dry-run", is_flag=True, help="Print what would be stopped.")
def reap(**_options: object) -> None:
    """Nightly backstop: stop every managed deployment running with no live lease."""
    later("reap")
