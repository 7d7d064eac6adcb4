"""Commands that stand alone: config, keys, build."""

from __future__ import annotations

from pathlib import Path

import click

from ondemand.cli.root import App, cli, pass_app

# -- config -------------------------------------------------------------------------------


@cli.command("config")
@pass_app
def show_config(app: App) -> None:
    """Print the effective configuration and where each value came from.

    Layers: defaults < ondemand.yml < environment < flags. Secrets are shown only as set
    or unset. Exit 2 with every problem listed (file line, variable or flag) when a value
    does not validate.
    """
    resolved = app.config()
    rows = resolved.summary()
    data = {
        "file": str(resolved.file) if resolved.file else None,
        "settings": {key: {"value": value, "source": source} for key, value, source in rows},
    }
    key_width = max(len(key) for key, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [f"config file: {resolved.file or '(none)'}"]
    lines += [f"{k:<{key_width}}  {v:<{value_width}}  {src}" for k, v, src in rows]
    app.emit(data, "\n".join(lines))


# -- keys -------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Mint API keys for the proxy."""


@keys.command("new")
@click.option("--name", "key_name", help="Name shown in logs and metrics (not secret).")
@click.option("--models", help="Comma-separated models this key may use (default: all).")
@click.option("--admin", is_flag=True, help="An admin key: may pull, delete and read all status.")
@pass_app
def keys_new(app: App, key_name: str | None, models: str | None, admin: bool) -> None:
    """Mint a key; print it once, with its sha256: form for ONDEMAND_KEYS_FILE.

    Store the key as a secret (e.g. AUTHORIZATION_APIKEY or ONDEMAND_ADMIN_KEY) and put the
    sha256: line in the keys file: the file then holds no secret.
    """
    from ondemand.keys import mint

    minted = mint(key_name, models=tuple((models or "").split(",")), admin=admin)
    app.actions.mask(minted.key)
    data = {
        "name": minted.name,
        "key": minted.key,
        "sha256": minted.sha256,
        "admin": minted.admin,
        "models": list(minted.models) or None,
    }
    human = (
        f"{minted.key}\n\n"
        "The key is shown once: store it as a secret now.\n"
        "For ONDEMAND_KEYS_FILE (holds only the hash):\n"
        f"{minted.keys_file_entry()}"
    )
    app.emit(data, human)


@cli.command()
@click.option(
    "--tag",
    "-t",
    metavar="REF",
    help="Image reference to build, e.g. ghcr.io/org/ollama-ondemand:1. "
    "[env: ONDEMAND_IMAGE; default: the config's image, else ollama-ondemand:local]",
)
@click.option(
    "--push",
    is_flag=True,
    help="Push to the tag's registry instead of loading into the local Docker "
    "(log in with 'docker login' first).",
)
@click.option("--platform", default="linux/amd64", show_default=True, help="Target platform.")
@click.option(
    "--ollama-version",
    metavar="V",
    help="ollama/ollama release to base the image on. [default: the one image/Dockerfile pins]",
)
@click.option(
    "--context",
    "context_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding image/Dockerfile. [env: ONDEMAND_IMAGE_CONTEXT; default: this "
    "package's source tree, $GITHUB_ACTION_PATH or the current directory]",
)
@pass_app
def build(
    app: App,
    tag: str | None,
    push: bool,
    platform: str,
    ollama_version: str | None,
    context_dir: Path | None,
) -> None:
    """Build the server image (image/) with docker buildx, and optionally push it.

    Prints IMAGE@DIGEST on stdout (the pushed digest with --push); the build log streams to
    stderr. Registry credentials are docker's: run 'docker login' first. Exit 7 when
    docker/buildx is missing or the build or push fails.
    """
    from ondemand import image

    if tag is None:
        tag = app.config().config.image or image.DEFAULT_TAG
    request = image.prepare(
        tag=tag,
        push=push,
        platform=platform,
        ollama_version=ollama_version,
        context=context_dir,
        env=app.env,
        cwd=Path.cwd(),
    )
    result = image.build(request, env=app.env, actions=app.actions, show_log=app.verbosity >= 0)
    app.emit(result.as_dict(), result.reference)
