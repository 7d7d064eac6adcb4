"""The command line: the only module that imports click. It parses, calls, prints.

Everything heavy (pydantic, httpx, PyGithub, the ASGI server) is imported inside the
command that needs it, so ``ondemand --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from ondemand import __version__
from ondemand.errors import NotAvailableError, OndemandError

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig
    from ondemand.gha import Actions
    from ondemand.lifecycle import UpResult
    from ondemand.providers.base import Provider

PROVIDERS = ("local", "ovh", "runpod", "runpod-pod", "sandbox")
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
    type=click.Choice(PROVIDERS),
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


# -- proxy and sandbox --------------------------------------------------------------------


@cli.command()
@click.option(
    "--upstream",
    metavar="URL",
    help="Ollama to forward to. [env: ONDEMAND_UPSTREAM; default: http://127.0.0.1:11434]",
)
@click.option("--host", default=None, help="Address to listen on. [env: HOST; default: 0.0.0.0]")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="[env: PORT; default: 8080]"
)
@pass_app
def proxy(app: App, upstream: str | None, host: str | None, port: int | None) -> None:
    """Run the authenticating proxy alone, in front of an Ollama you run yourself.

    Keys come from AUTHORIZATION_APIKEY, AUTHORIZATION_APIKEY_*, ONDEMAND_ADMIN_KEY,
    ONDEMAND_KEYS_FILE or ONDEMAND_BASIC_AUTH; with none set it refuses to start (set
    ONDEMAND_INSECURE_NO_AUTH=1 to serve without authentication). Clients send the key as
    'Authorization: Bearer <key>', 'X-API-Key: <key>' or as the Basic-auth password.
    """
    from ondemand.proxy import ProxySettings, create_app
    from ondemand.proxy.logs import configure_logging
    from ondemand.serving import bind, run

    settings = ProxySettings.from_env(app.env, upstream=upstream)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    bind_host = host or app.env.get("HOST") or "0.0.0.0"
    bind_port = port if port is not None else _env_port(app.env, "PORT", 8080)
    sock = bind(bind_host, bind_port)
    shown_port = sock.getsockname()[1]
    if settings.keys.insecure_no_auth:
        app.info("warning: ONDEMAND_INSECURE_NO_AUTH is set: anyone who can connect is admin")
    app.info(f"proxy listening on http://{bind_host}:{shown_port} -> {settings.upstream}")
    run(create_app(settings), sock=sock, log_level="warning", lifespan="on")


def _env_port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        from ondemand.errors import ConfigError

        raise ConfigError(f"{name} must be a port number (0-65535), got {raw!r}")
    return int(raw)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (default: any free).")
@click.option("--models", help="Models the emulated Ollama has (comma-separated).")
@click.option("--tokens-per-second", type=float, help="Generation speed per stream (0: max).")
@click.option("--ttft", type=float, help="Seconds before the first token.")
@pass_app
def sandbox(
    app: App,
    host: str,
    port: int,
    models: str | None,
    tokens_per_second: float | None,
    ttft: float | None,
) -> None:
    """Run the built-in emulators on loopback, for rehearsals without a GPU bill.

    This version serves the Ollama API emulator and prints OLLAMA_HOST for it; the OVH AI
    Deploy and RunPod emulators are not available yet in this version.
    """
    from ondemand.sandbox.ollama import EmulatorConfig, create_app
    from ondemand.serving import bind, run

    env = dict(app.env)
    if models is not None:
        env["OLLAMA_EMULATOR_MODELS"] = models
    if tokens_per_second is not None:
        env["OLLAMA_EMULATOR_TOKENS_PER_SECOND"] = str(tokens_per_second)
    if ttft is not None:
        env["OLLAMA_EMULATOR_TTFT"] = str(ttft)
    emulator = create_app(EmulatorConfig.from_env(env))
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    app.emit({"OLLAMA_HOST": url}, f"OLLAMA_HOST={url}")
    app.info("Ollama API emulator ready (Ctrl-C to stop); cloud emulators: not available yet")
    sys.stdout.flush()
    run(emulator, sock=sock)


# -- commands of later versions ---------------------------------------------------------


def _later(name: str) -> NoReturn:
    raise not_available(name)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would change, write nothing.")
def init(**_options: object) -> None:
    """Write ondemand.yml and the GitHub workflows (nightly stop, manual control) into a repo.

    Re-running updates the files in place and keeps your comments and edits.
    """
    _later("init")


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


def _lifecycle(app: App, **flags: object) -> tuple[ResolvedConfig, Provider]:
    from ondemand.lifecycle import make_provider

    resolved = app.config(**flags)
    for secret in resolved.secrets.secret_values():
        app.actions.mask(secret)
    return resolved, make_provider(resolved, app.env)


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
    }
    if app.as_json:
        app.emit(data, "")
        return
    how = "already running" if result.reused else (
        f"server {_seconds(result.seconds_to_start)}, models warm "
        f"{_seconds(result.seconds_to_warm)} later"
    )  # fmt: skip
    app.info(f"ready: {result.url} ({provider}; {how})")
    for line in models:
        app.info(f"  {line}")
    lines = [f"OLLAMA_HOST={result.url}", f"OPENAI_BASE_URL={result.openai_url}"]
    if result.api_key:
        lines += [f"OLLAMA_API_KEY={result.api_key}", f"OPENAI_API_KEY={result.api_key}"]
    app.emit(data, "\n".join(lines))


@cli.command()
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
    app.emit(
        {"deployment_id": deployment.id, "status": deployment.status.value},
        f"deployed {deployment.name} ({provider.name}): {deployment.status.value}",
    )


@cli.command()
@click.option("--no-wait", is_flag=True, help="Return once the provider accepted the start.")
@click.option("--timeout", help="How long to wait for ready, e.g. 15m. [env: ONDEMAND_TIMEOUT]")
@pass_app
def start(app: App, no_wait: bool, timeout: str | None) -> None:
    """Start the deployment (the provider's raw start) and wait until it is ready."""
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app, timeout=timeout)
    result = lifecycle.start(resolved, provider, wait=not no_wait, progress=app.info)
    if no_wait:
        app.emit(
            {"deployment_id": result.deployment.id, "status": result.deployment.status.value},
            f"starting {result.deployment.name} ({provider.name})",
        )
        return
    _print_up(app, result, provider.name)


@cli.command()
@click.option("--timeout", help="How long to wait for the provider to report it stopped.")
@pass_app
def stop(app: App, timeout: str | None) -> None:
    """Stop the deployment (the provider's raw stop) and verify it stopped billing compute."""
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app, timeout=timeout)
    result = lifecycle.down(resolved, provider)
    app.emit({"status": result.deployment.status.value, "stopped": result.was_running},
             result.message)  # fmt: skip


@cli.command()
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

    resolved, provider = _lifecycle(app, timeout=timeout, lease_ttl=lease_ttl)
    app.info(f"starting {resolved.config.name} on {provider.name}...")
    result = lifecycle.up(resolved, provider, progress=app.info)
    _print_up(app, result, provider.name)


@cli.command()
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

    del lease_id, force  # leases arrive with the lease-aware server
    resolved, provider = _lifecycle(app)
    result = lifecycle.down(resolved, provider, delete_after=delete_after)
    app.emit({"status": result.deployment.status.value, "stopped": result.was_running},
             result.message)  # fmt: skip


@cli.command()
@pass_app
def status(app: App) -> None:
    """Provider state, URL, readiness, models (GPU or CPU), activity, leases, cost."""
    from ondemand import lifecycle

    resolved, provider = _lifecycle(app)
    report = lifecycle.status(resolved, provider)
    app.emit(report, _status_text(report))


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


@cli.command()
@click.option("--idle", help="Stop after this long without requests, e.g. 30m.")
@click.option("--max-lifetime", help="Stop deployments older than this, e.g. 8h.")
@click.option("--once", is_flag=True, help="Check once and exit (for cron).")
def watchdog(**_options: object) -> None:
    """Stop the deployment when idle with no live lease, or past its max lifetime."""
    _later("watchdog")


@cli.command()
@click.option("--older-than", help="Stop lease-less deployments running longer than this.")
@click.option("--dry-run", is_flag=True, help="Print what would be stopped.")
def reap(**_options: object) -> None:
    """Nightly backstop: stop every managed deployment running with no live lease."""
    _later("reap")


@cli.command()
@pass_app
def serve(app: App) -> None:
    """The image's entrypoint: supervise 'ollama serve', preload and warm models, proxy.

    /ping answers 204 while starting, 200 once every model is warm, 503 when unhealthy.
    Configured by environment (see docs/serve.md): OLLAMA_PRELOAD_MODELS and
    PRELOAD_MODEL_*, OLLAMA_BIN, PORT, PORT_HEALTH, ONDEMAND_REQUIRE_GPU, the proxy's keys.
    """
    from ondemand.serve import serve as run_serve

    sys.exit(run_serve(app.env))


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
