"""What the server image runs: Ollama supervised, models preloaded and warm, the proxy."""

from __future__ import annotations

from collections.abc import Mapping


def serve(env: Mapping[str, str]) -> int:
    """Run ``ondemand serve`` until SIGTERM/SIGINT; return the exit status."""
    from ondemand.proxy.logs import configure_logging
    from ondemand.serve.server import Serve
    from ondemand.serve.settings import ServeSettings
    from ondemand.serving import run_loop

    settings = ServeSettings.from_env(env)
    configure_logging(settings.proxy.log_level, json_lines=settings.proxy.log_json)
    status: int = run_loop(Serve(settings, env).run())
    return status
