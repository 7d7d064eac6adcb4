"""The root command, what every command shares (``App``), and the one error handler."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ondemand import __version__
from ondemand.errors import NotAvailableError, OndemandError
from ondemand.providers import PROVIDER_NAMES

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.gha import Actions

_TRUE = {"1", "true", "yes", "on"}


@dataclass
class App:
    """What every command shares: the environment, output mode and flags."""

    env: Mapping[str, str]
    as_json: bool = False
    verbosity: int = 0
    debug: bool = False
    config_path: Path | None = None
    flags: dict[str, object] = field(default_factory=dict)
    _actions: Actions | None = None

    @property
    def actions(self) -> Actions:
        if self._actions is None:
            from ondemand.gha import Actions

            self._actions = Actions(self.env)
        return self._actions

    def config(self, **command_flags: object) -> ResolvedConfig:
        from ondemand.config import load_config

        flags = dict(self.flags)
        flags.update({k: v for k, v in command_flags.items() if v is not None})
        return load_config(path=self.config_path, env=self.env, flags=flags, cwd=Path.cwd())

    def emit(self, data: Mapping[str, object], human: str) -> None:
        """Print a result: JSON on stdout with --json, otherwise the human text."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        elif human and self.verbosity >= 0:
            click.echo(human)

    def info(self, message: str) -> None:
        """Progress and notes go to stderr, so stdout stays clean for --json."""
        if self.verbosity >= 0:
            click.echo(message, err=True)


def _debug_requested(argv: list[str], env: Mapping[str, str]) -> bool:
    return (
        "--debug" in argv
        or env.get("RUNNER_DEBUG") == "1"
        or env.get("ONDEMAND_DEBUG", "").lower() in _TRUE
    )


def not_available(command: str) -> NotAvailableError:
    return NotAvailableError(f"'ondemand {command}' is not available yet in this version")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file. [env: ONDEMAND_CONFIG; default: ./ondemand.yml if present]",
)
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_NAMES),
    help="Where the server runs. [env: ONDEMAND_PROVIDER; default: local]",
)
@click.option("--name", help="Deployment name. [env: ONDEMAND_NAME; default: ollama-ondemand]")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less output (repeatable).")
@click.option(
    "--debug", is_flag=True, help="Show tracebacks. [env: ONDEMAND_DEBUG; on when RUNNER_DEBUG=1]"
)
@click.version_option(__version__, "--version", prog_name="ondemand")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    provider: str | None,
    name: str | None,
    as_json: bool,
    verbose: int,
    quiet: int,
    debug: bool,
) -> None:
    """Ollama on GPU clouds, only while it is used.

    Deploy the server image to OVHcloud AI Deploy or RunPod, start it before your tests,
    stop it after them (or when idle, or nightly), and put an authenticating, streaming
    proxy in front of Ollama. Exit codes: 0 ok, 1 unexpected, 2 usage/config, 3 provider
    API, 4 credentials, 5 no capacity, 6 ready timeout, 7 image build, 8 GitHub API,
    9 server unhealthy.
    """
    env = os.environ
    flags: dict[str, object] = {}
    if provider is not None:
        flags["provider"] = provider
    if name is not None:
        flags["name"] = name
    ctx.obj = App(
        env=env,
        as_json=as_json,
        verbosity=verbose - quiet,
        debug=debug or _debug_requested([], env),
        config_path=config_path,
        flags=flags,
    )


pass_app = click.make_pass_decorator(App)


# -- the global options, after the command too ---------------------------------------------
# 'ondemand up --provider sandbox' reads as naturally as 'ondemand --provider sandbox up':
# every command also takes the global options, unless it has an option of that name itself
# ('keys new --name' names the key). Given after the command, they win over the same
# option given before it.


def _set_config(app: App, value: object) -> None:
    app.config_path = value if isinstance(value, Path) else app.config_path


def _set_flag(name: str) -> Callable[[App, object], None]:
    def apply(app: App, value: object) -> None:
        app.flags[name] = value

    return apply


def _set_json(app: App, _: object) -> None:
    app.as_json = True


def _more(app: App, value: object) -> None:
    app.verbosity += int(value) if isinstance(value, int) else 0


def _less(app: App, value: object) -> None:
    app.verbosity -= int(value) if isinstance(value, int) else 0


def _set_debug(app: App, _: object) -> None:
    app.debug = True


def _after_command(apply: Callable[[App, object], None]) -> Callable[..., None]:
    def callback(ctx: click.Context, _: click.Parameter, value: object) -> None:
        app = ctx.find_object(App)
        if app is not None and value not in (None, False, 0):
            apply(app, value)

    return callback


def _global_options() -> list[click.Option]:
    def option(*decls: str, apply: Callable[[App, object], None], **kw: Any) -> click.Option:
        return click.Option(decls, expose_value=False, callback=_after_command(apply), **kw)

    return [
        option("--config", apply=_set_config,
               type=click.Path(dir_okay=False, path_type=Path),
               help="Config file (same as the global --config)."),
        option("--provider", apply=_set_flag("provider"), type=click.Choice(PROVIDER_NAMES),
               help="Where the server runs (same as the global --provider)."),
        option("--name", apply=_set_flag("name"),
               help="Deployment name (same as the global --name)."),
        option("--json", apply=_set_json, is_flag=True,
               help="Print results as JSON on stdout (same as the global --json)."),
        option("-v", "--verbose", apply=_more, count=True, help="More output (repeatable)."),
        option("-q", "--quiet", apply=_less, count=True, help="Less output (repeatable)."),
        option("--debug", apply=_set_debug, is_flag=True, help="Show tracebacks."),
    ]  # fmt: skip


def spread_global_options(group: click.Group) -> None:
    """Give every command of ``group`` (and of its groups) the global options it lacks."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            spread_global_options(command)
            continue
        taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for option in _global_options():
            if not taken & set(option.opts):
                command.params.append(option)


# -- entry point --------------------------------------------------------------------------


def _report(exc: OndemandError, env: Mapping[str, str], as_json: bool) -> None:
    from ondemand.gha import Actions

    if as_json:
        payload = {
            "error": {
                "type": type(exc).__name__,
                "exit_code": exc.exit_code,
                "message": exc.message,
                "cause": exc.cause,
                "hint": exc.hint,
                "notes": exc.notes,
            }
        }
        click.echo(json.dumps(payload, indent=2))
    actions = Actions(env)
    if actions.active:
        actions.error(exc.render(), title=exc.title)
    else:
        click.echo(f"error: {exc.render()}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn every error into a message and its exit code."""
    args = sys.argv[1:] if argv is None else argv
    env = os.environ
    debug = _debug_requested(args, env)
    as_json = "--json" in args
    try:
        code = cli.main(args=args, prog_name="ondemand", standalone_mode=False)
    except OndemandError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _report(exc, env, as_json)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"error: unexpected {type(exc).__name__}: {exc}\n"
            "This is a bug in ondemand; run again with --debug for the traceback and report it.",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
