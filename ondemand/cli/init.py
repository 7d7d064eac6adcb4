"""``ondemand init``: write ondemand.yml and the GitHub workflows into a repository."""

from __future__ import annotations

from pathlib import Path

import click

from ondemand.cli.root import App, cli, pass_app


@cli.command()
@click.option(
    "--directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(),
    help="The repository root to write into. [default: the current directory]",
)
@click.option(
    "--provider",
    "provider",
    help="The provider to write settings for (same as the global --provider).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change as a diff, write nothing.")
@pass_app
def init(app: App, directory: Path, provider: str | None, dry_run: bool) -> None:
    """Write ondemand.yml and the GitHub workflows (tests, nightly stop, manual control).

    Writes ondemand.yml for a provider ('ondemand init --provider ovh' or ONDEMAND_PROVIDER,
    else the one ondemand.yml already names, else local) and the workflows
    .github/workflows/ollama-tests.yml, ollama-nightly-stop.yml and ollama-manual.yml.
    Re-running updates the files in place and keeps your comments and edits: it adds the
    keys and steps the templates have and a file lacks, and never overwrites a value you
    changed (docs/init.md). Prints created, updated or unchanged for each file; exit 2,
    writing nothing, when a file is not valid YAML.
    """
    from ondemand import scaffold
    from ondemand.config import load_config

    # The provider and name as every command resolves them: flags, env, then the
    # ondemand.yml being updated (none yet is fine).
    flags = {**app.flags, "provider": provider} if provider else app.flags
    resolved = load_config(path=app.config_path, env=app.env, flags=flags, cwd=directory)
    config = resolved.config
    changes = scaffold.plan(directory, provider=config.provider, name=config.name)
    if not dry_run:
        scaffold.write(changes)
    for change in changes:
        for note in change.notes:
            app.info(f"note: {note}")
    data = {
        "directory": str(directory),
        "provider": config.provider,
        "dry_run": dry_run,
        "files": [
            {
                "path": str(change.target),
                "result": change.action,
                "notes": list(change.notes),
                **({"diff": change.diff()} if dry_run else {}),
            }
            for change in changes
        ],
    }
    if dry_run:
        verbs = {"created": "would create", "updated": "would update", "unchanged": "unchanged"}
        diffs = "".join(change.diff() for change in changes)
        lines = [f"{verbs[change.action]} {change.target}" for change in changes]
        app.emit(data, diffs + "\n".join(lines))
    else:
        app.emit(data, "\n".join(f"{change.action} {change.target}" for change in changes))
