"""Commands that run a server in the foreground: proxy, sandbox, serve."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import click

from ondemand.cli.root import App, cli, pass_app

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
