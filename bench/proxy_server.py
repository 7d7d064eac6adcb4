"""Serve the proxy with a chosen ASGI server and upstream client, for the comparison runs.

    python bench/proxy_server.py --server uvicorn --client httptools --port 9000 --upstream URL

Keys and limits come from the environment, as for ``ondemand proxy``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ondemand.proxy import ProxyApp, ProxySettings


def make_app() -> ProxyApp:
    settings = ProxySettings.from_env(os.environ)
    client = os.environ.get("BENCH_CLIENT", "httptools")
    if client == "httpx":
        from bench.httpx_upstream import HttpxUpstream

        return ProxyApp(settings, upstream=HttpxUpstream(settings.upstream))
    if client == "aiohttp":
        from bench.aiohttp_upstream import AiohttpUpstream

        return ProxyApp(settings, upstream=AiohttpUpstream(settings.upstream))
    return ProxyApp(settings)  # the shipped default


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--client", choices=["httptools", "aiohttp", "httpx"], default="httptools")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ["ONDEMAND_UPSTREAM"] = args.upstream
    os.environ["BENCH_CLIENT"] = args.client
    if args.server == "granian":
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        Server(
            "bench.proxy_server:make_app",
            address="127.0.0.1",
            port=args.port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            factory=True,
            log_enabled=False,
        ).serve()
        return
    from ondemand.proxy.workers import attach
    from ondemand.serving import listeners, run

    app = make_app()
    # ONDEMAND_PROXY_WORKERS, as `ondemand proxy` reads it
    sock, *theirs = listeners("127.0.0.1", args.port, app.settings.workers)
    more = attach(app, theirs, os.environ)
    run(app, sock=sock, lifespan="on", limits=app.settings.door, counts=app.door,
        more_sockets=more, on_stop=app.stopping)  # fmt: skip


if __name__ == "__main__":
    main()
