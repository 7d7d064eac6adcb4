"""Commands that run a server in the foreground: proxy, sandbox, serve."""

from __future__ import annotations

import sys
from pathlib import Path

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
    ONDEMAND_PROXY_WORKERS=N serves the port from N processes that count as one.
    """
    from ondemand.envvalues import Env
    from ondemand.proxy import ProxySettings, create_app
    from ondemand.proxy.logs import configure_logging
    from ondemand.proxy.workers import attach
    from ondemand.serving import listeners, run

    settings = ProxySettings.from_env(app.env, upstream=upstream)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    read = Env(app.env)
    bind_host = host or read.text("HOST", "0.0.0.0")
    # 0 (any free port) is allowed here, as for --port: the proxy prints the one it got.
    bind_port = port if port is not None else read.port("PORT", 8080, allow_zero=True)
    sock, *theirs = listeners(bind_host, bind_port, settings.workers)
    shown_port = sock.getsockname()[1]
    proxy = create_app(settings)
    more = attach(proxy, theirs, app.env)
    if settings.keys.insecure_no_auth:
        app.info("warning: ONDEMAND_INSECURE_NO_AUTH is set: anyone who can connect is admin")
    app.info(f"proxy listening on http://{bind_host}:{shown_port} -> {settings.upstream}")
    if more:
        app.info(f"{settings.workers} processes serve the port (ONDEMAND_PROXY_WORKERS)")
    run(proxy, sock=sock, log_level="warning", lifespan="on", limits=settings.door,
        counts=proxy.door, more_sockets=more, on_stop=proxy.stopping)  # fmt: skip


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (default: any free).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where apps, logs and model stores are kept. [default: $ONDEMAND_STATE_DIR/sandbox, "
    "else $RUNNER_TEMP/ondemand/sandbox, else ~/.cache/ondemand/sandbox]",
)
@click.option(
    "--transition-seconds",
    type=click.FloatRange(min=0),
    default=0.3,
    show_default=True,
    help="How long QUEUED and INITIALIZING (and at least STOPPING, DELETING) last.",
)
@click.option(
    "--no-worker-wait",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="RunPod: how long a load-balancer request waits for a ready worker before "
    "'no workers available'.",
)
@click.option(
    "--pod-proxy-timeout",
    type=click.FloatRange(min=0),
    default=100.0,
    show_default=True,
    help="RunPod: how long the pod proxy waits for a response to start before a 524.",
)
@click.option("--models", help="Models the emulated Ollama has (comma-separated).")
@click.option("--tokens-per-second", type=float, help="Generation speed per stream (0: max).")
@click.option("--ttft", type=float, help="Seconds before the first token.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, not KEY=value lines.")
@pass_app
def sandbox(
    app: App,
    host: str,
    port: int,
    state_dir: Path | None,
    transition_seconds: float,
    no_worker_wait: float,
    pod_proxy_timeout: float,
    models: str | None,
    tokens_per_second: float | None,
    ttft: float | None,
    as_json: bool,
) -> None:
    """Run the emulated clouds on loopback, for rehearsals without a GPU bill.

    Serves OVHcloud AI Deploy's API under /ovh and RunPod's REST v2 with its load
    balancer, health and pod proxy under /runpod (apps, workers and pods are real
    'ondemand serve' processes with an emulated Ollama), the Ollama API emulator under
    /ollama, and control routes under /_sandbox (faults, apps). Prints
    ONDEMAND_SANDBOX_URL, OVH_AI_API_URL, OVH_AI_TOKEN, OLLAMA_HOST, RUNPOD_API_KEY,
    RUNPOD_API_URL, RUNPOD_ENDPOINT_BASE_URL and RUNPOD_POD_PROXY_URL, one KEY=value per
    line. Tokens: ONDEMAND_SANDBOX_TOKEN (operator, also the RunPod API key) and
    ONDEMAND_SANDBOX_READ_TOKEN (read-only), else sandbox-operator / sandbox-read. Faults
    at start-up: ONDEMAND_SANDBOX_FAULTS (JSON, see docs/sandbox.md). Apps, endpoints and
    pods survive a restart on the same state directory. SIGTERM or Ctrl-C stops every
    process and exits 0.
    """
    import json
    import logging

    from ondemand.errors import ConfigError
    from ondemand.sandbox.ollama import EmulatorConfig
    from ondemand.sandbox.server import (
        DEFAULT_OPERATOR_TOKEN,
        DEFAULT_READ_TOKEN,
        client_env,
        create_sandbox,
    )
    from ondemand.serving import bind, run
    from ondemand.statedir import state_root

    env = dict(app.env)
    if models is not None:
        env["OLLAMA_EMULATOR_MODELS"] = models
    if tokens_per_second is not None:
        env["OLLAMA_EMULATOR_TOKENS_PER_SECOND"] = str(tokens_per_second)
    if ttft is not None:
        env["OLLAMA_EMULATOR_TTFT"] = str(ttft)
    # The apps' emulated Ollama gets the same models and speeds as the one under /ollama,
    # and their servers the rehearsal's fast lease and idle clock when one is set.
    app_env = {
        k: v
        for k, v in env.items()
        if k.startswith("OLLAMA_EMULATOR_") or k == "ONDEMAND_CLOCK_SCALE"
    }
    operator = env.get("ONDEMAND_SANDBOX_TOKEN", "").strip() or DEFAULT_OPERATOR_TOKEN
    read = env.get("ONDEMAND_SANDBOX_READ_TOKEN", "").strip() or DEFAULT_READ_TOKEN
    directory = state_dir or state_root(env) / "sandbox"
    logging.basicConfig(
        level=logging.INFO if app.verbosity > 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = EmulatorConfig.from_env(env)
        config.models_dir = None  # the sandbox keeps its own store, never a real Ollama's
        box = create_sandbox(
            directory, operator_token=operator, read_token=read,
            transition_seconds=transition_seconds, ollama=config, app_env=app_env,
            faults=env.get("ONDEMAND_SANDBOX_FAULTS", "").strip() or None,
            no_worker_wait=no_worker_wait, pod_proxy_timeout=pod_proxy_timeout,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"cannot start the sandbox: {exc}") from None
    sock = bind(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    printed = client_env(url, operator)
    if as_json or app.as_json:
        extra = {"ONDEMAND_SANDBOX_READ_TOKEN": read, "ONDEMAND_SANDBOX_STATE_DIR": str(directory)}
        click.echo(json.dumps({**printed, **extra}))
    else:
        click.echo("\n".join(f"{k}={v}" for k, v in printed.items()))
    sys.stdout.flush()
    app.info(
        f"sandbox ready on {url} (Ctrl-C to stop): OVH AI Deploy under /ovh, RunPod under "
        f"/runpod, Ollama under /ollama; operator token {operator!r}, read token {read!r}; "
        f"state in {directory}"
    )
    if host not in ("127.0.0.1", "::1", "localhost"):
        app.info("warning: the sandbox's tokens are well known; keep it on loopback")
    try:
        run(box, sock=sock, lifespan="on")
    finally:
        box.close()


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
