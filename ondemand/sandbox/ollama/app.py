"""The emulator as one ASGI callable: gin-like routing, fault injection, control routes.

``/_emulator/*`` is not part of Ollama; it exists so tests and benchmarks can read counters
and events, change the configuration and reset state while the emulator runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ondemand.asgi import ClientDisconnected, read_body, send_bytes, send_text, serve_lifespan
from ondemand.sandbox.ollama import embed, models_api, native, openai_api
from ondemand.sandbox.ollama.config import EmulatorConfig
from ondemand.sandbox.ollama.gojson import RequestError
from ondemand.sandbox.ollama.state import Call, State
from ondemand.sandbox.ollama.wire import send_error, send_json

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.ollama.stats import Stats

Handler = Callable[[State, Call], Awaitable[None]]
CONTROL_PREFIX = "/_emulator/"


async def _root(_state: State, call: Call) -> None:
    await send_text(call.send, 200, "Ollama is running")


ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": _root, "HEAD": _root},
    "/api/version": {"GET": models_api.version, "HEAD": models_api.version},
    "/api/status": {"GET": models_api.status},
    "/api/tags": {"GET": models_api.tags, "HEAD": models_api.tags},
    "/api/ps": {"GET": models_api.ps},
    "/api/show": {"POST": models_api.show},
    "/api/pull": {"POST": models_api.pull},
    "/api/delete": {"DELETE": models_api.delete},
    "/api/copy": {"POST": models_api.copy},
    "/api/generate": {"POST": native.generate},
    "/api/chat": {"POST": native.chat},
    "/api/embed": {"POST": embed.embed},
    "/api/embeddings": {"POST": embed.embeddings},
    "/v1/chat/completions": {"POST": openai_api.chat_completions},
    "/v1/completions": {"POST": openai_api.completions},
    "/v1/embeddings": {"POST": openai_api.embeddings},
    "/v1/models": {"GET": openai_api.list_models},
}
_MODEL_ROUTE: dict[str, Handler] = {"GET": openai_api.retrieve_model}
_BLOB_ROUTE: dict[str, Handler] = {"HEAD": models_api.blob, "POST": models_api.blob}


def _match(path: str) -> tuple[dict[str, Handler] | None, dict[str, str]]:
    methods = ROUTES.get(path)
    if methods is not None:
        return methods, {}
    for prefix, route, key in (
        ("/v1/models/", _MODEL_ROUTE, "model"),
        ("/api/blobs/", _BLOB_ROUTE, "digest"),
    ):
        if path.startswith(prefix):
            value = path[len(prefix) :]
            if value and "/" not in value:
                return route, {key: value}
    return None, {}


class Emulator:
    """An Ollama server without a GPU. ASGI callable; ``config`` and ``stats`` are live."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.state = State(config if config is not None else EmulatorConfig())

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    @property
    def stats(self) -> Stats:
        return self.state.stats

    def loaded(self) -> list[dict[str, Any]]:
        """What ``/api/ps`` would answer now."""
        return self.state.residency.ps()

    def cancels(self) -> list[dict[str, Any]]:
        """Cancel events: requests whose client disconnected before the answer was complete."""
        return self.stats.cancels()

    def patch_config(self, data: dict[str, Any]) -> None:
        """The in-process twin of ``POST /_emulator/config``; ValueError if invalid."""
        self.config.patch(data)
        if "models" in data or "models_dir" in data:
            self.state.store.sync_disk()

    def reset(self) -> None:
        """Forget counters, events, loaded models and pending faults; keep models and config."""
        self.stats.reset()
        self.state.residency.clear()
        self.config.faults.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if path.startswith(CONTROL_PREFIX):
            await self._control(method, path, receive, send)
            return
        methods, params = _match(path)
        if methods is None:
            if len(path) > 1 and path.endswith("/") and _match(path.rstrip("/"))[0] is not None:
                await _redirect(send, method, path.rstrip("/"))
            else:
                await send_text(send, 404, "404 page not found")
            return
        handler = methods.get(method)
        if handler is None:
            await send_text(send, 405, "405 method not allowed")
            return
        stats = self.stats
        stats.requests += 1
        stats.routes[f"{method} {path}"] += 1
        try:
            body = await read_body(receive)
        except ClientDisconnected:
            return
        call = Call(scope, receive, send, method, path, body, params=params)
        openai = path.startswith("/v1/")
        if self.config.faults:
            call.fault = self.config.take_fault(path)
            if call.fault is not None:
                stats.faults += 1
                stats.event("fault", route=path, status=call.fault.status)
                if call.fault.close_after_lines is None and call.fault.error_after_lines is None:
                    await _fault_answer(send, call.fault.status, call.fault.message, openai)
                    return
        try:
            await handler(self.state, call)
        except RequestError as exc:
            await send_error(send, exc.status, exc.message, openai=openai)

    async def _control(self, method: str, path: str, receive: Receive, send: Send) -> None:
        name = path[len(CONTROL_PREFIX) :]
        allowed = {"stats": ("GET",), "config": ("GET", "POST"), "reset": ("POST",)}
        if name not in allowed:
            await send_text(send, 404, "404 page not found")
            return
        if method not in allowed[name]:
            await send_text(send, 405, "405 method not allowed")
            return
        try:
            body = await read_body(receive)
        except ClientDisconnected:
            return
        if name == "stats":
            payload = self.stats.to_json()
            payload["loaded"] = self.loaded()
            await send_json(send, 200, payload)
        elif name == "reset":
            self.reset()
            await send_json(send, 200, {"status": "reset"})
        elif method == "POST":
            try:
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object of config fields")
                self.patch_config(data)
            except ValueError as exc:
                await send_json(send, 400, {"error": str(exc)})
                return
            await send_json(send, 200, self.config.to_json())
        else:
            await send_json(send, 200, self.config.to_json())


async def _fault_answer(send: Send, status: int, message: str, openai: bool) -> None:
    if status == 403:
        await send_bytes(send, 403, b"", b"text/plain; charset=utf-8")
    else:
        await send_error(send, status, message, openai=openai)


async def _redirect(send: Send, method: str, location: str) -> None:
    """gin's RedirectTrailingSlash: 301 for GET, 307 for other methods."""
    status = 301 if method == "GET" else 307
    body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode() if status == 301 else b""
    headers = [(b"location", location.encode())]
    await send_bytes(send, status, body, b"text/html; charset=utf-8", headers)


def create_app(config: EmulatorConfig | None = None) -> Emulator:
    """A fresh emulator; ``config`` defaults to two models (llama3.2, nomic-embed-text)."""
    return Emulator(config)
