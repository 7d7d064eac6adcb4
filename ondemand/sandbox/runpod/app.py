"""The emulator's ASGI app, mounted at ``/runpod``: the REST API and the data planes, each
under the path that stands in for its host (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ondemand.asgi import header, send_json, serve_lifespan
from ondemand.sandbox.runpod.api import RestApi
from ondemand.sandbox.runpod.gateway import Gateway
from ondemand.sandbox.runpod.problems import send_problem

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.faults import FaultSet
    from ondemand.sandbox.runpod.engine import RunPodEngine

_DEFAULT_429 = "rate limit exceeded for the minute window"


def base_url(scope: Scope) -> str:
    """The URL a client used to reach ``/runpod``: what the ``requestUrls`` point at."""
    host = header(scope, b"host")
    if host is not None:
        authority = host.decode("latin-1")
    else:
        server = scope.get("server") or ("127.0.0.1", 80)
        authority = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{authority}{scope.get('root_path', '')}"


class RunPodApi:
    """Everything under ``/runpod``. ``.engine`` holds the state."""

    def __init__(
        self, engine: RunPodEngine, faults: FaultSet, *, operator_token: str, read_token: str
    ) -> None:
        self.engine = engine
        self.faults = faults
        self.rest = RestApi(engine, operator_token=operator_token, read_token=read_token)
        self.gateway = Gateway(engine, operator_token, read_token)

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.gateway.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Mounted alone (not in the sandbox), it resumes its pods at start-up and
            # stops every server at shutdown.
            await serve_lifespan(receive, send, self.engine.begin, self.aclose)
            return
        if scope["type"] != "http":
            return
        self.engine.begin()
        path: str = scope["path"]
        rest = path == "/v2" or path.startswith("/v2/")
        fault = self.faults.take_http(scope["method"], path.rstrip("/") or "/")
        if fault is not None:
            retry = fault.retry_after_header
            headers = [(b"retry-after", retry.encode())] if retry is not None else []
            text = fault.text if fault.message or fault.status != 429 else _DEFAULT_429
            if rest:
                await send_problem(send, fault.status, text, headers=headers)
            else:
                await send_json(send, fault.status, {"error": text}, headers)
            return
        if rest:
            await self.rest(scope, receive, send, path.rstrip("/"), base_url(scope))
            return
        parts = path.split("/", 3)  # "", "lb" | "proxy" | "ai", the target, the rest
        head = parts[1]
        target = parts[2] if len(parts) > 2 else ""
        forwarded = "/" + (parts[3] if len(parts) > 3 else "")
        if head == "lb" and target:
            await self.gateway.load_balancer(scope, receive, send, target, forwarded)
        elif head == "proxy" and target:
            await self.gateway.pod_proxy(scope, receive, send, target, forwarded)
        elif head == "ai" and target == "v2" and forwarded.count("/") >= 2:
            endpoint_id, _, route = forwarded[1:].partition("/")
            await self.gateway.serverless_api(scope, send, endpoint_id, route)
        else:
            await send_problem(send, 404, f"no such route: {scope['method']} {path}")
