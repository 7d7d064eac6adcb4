"""The sandbox: the emulated clouds and Ollama behind one loopback server.

Mount table (``Sandbox.mounts``)::

    /ovh        OVHcloud AI Deploy's AI API (a client's base URL is <sandbox>/ovh)
    /runpod     RunPod's REST v2 (<sandbox>/runpod/v2/...) and its data planes
    /ollama     the Ollama API emulator, to rehearse against a bare Ollama
    /_sandbox   control routes (not part of any cloud): health, faults, apps, and
                POST /_sandbox/ovh/apps/<id>/replicas/<index>/restart

In process (tests)::

    with sandbox_server(tmp_path, transition_seconds=0.05) as running:
        httpx.post(running.ovh_url + "/v1/app", headers=running.headers, json={...})

or ``create_sandbox(state_dir, ...)`` served by ``ondemand.serving.BackgroundServer`` with
``lifespan="on"``, then ``close()``: every app process is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ondemand.asgi import ClientDisconnected, read_body, send_json, serve_lifespan
from ondemand.sandbox.apps import AppRunner
from ondemand.sandbox.faults import SandboxFaults
from ondemand.sandbox.ollama import EmulatorConfig, create_app
from ondemand.sandbox.ovh import ApiError, OvhApi, create_emulator
from ondemand.sandbox.runpod import RunPodApi
from ondemand.sandbox.runpod import create_emulator as create_runpod

if TYPE_CHECKING:
    from ondemand.asgi import ASGIApp, Receive, Scope, Send

DEFAULT_OPERATOR_TOKEN = "sandbox-operator"
DEFAULT_READ_TOKEN = "sandbox-read"
CONTROL = "/_sandbox"
_RESTART = re.compile(r"ovh/apps/(?P<id>[^/]+)/replicas/(?P<index>[0-9]{1,4})/restart")


class Sandbox:
    """One ASGI app for every emulator. ``close()``/``aclose()`` stop all app processes;
    the stored apps stay, and the next sandbox on the same state directory resumes them."""

    def __init__(
        self,
        state_dir: Path,
        *,
        operator_token: str = DEFAULT_OPERATOR_TOKEN,
        read_token: str = DEFAULT_READ_TOKEN,
        transition_seconds: float = 0.3,
        faults: object = None,
        ollama: EmulatorConfig | None = None,
        app_env: Mapping[str, str] | None = None,
        stop_grace: float = 30.0,
        probe_period: float = 1.0,
        no_worker_wait: float = 120.0,
        pod_proxy_timeout: float = 100.0,
    ) -> None:
        if operator_token == read_token:
            raise ValueError("the operator and read tokens must differ")
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_state(state_dir)
        self.operator_token = operator_token
        self.read_token = read_token
        self.faults = SandboxFaults(("ovh", "runpod"))
        if faults is not None:
            try:
                self.faults.add(faults)
            except ValueError:
                self._lock.close()
                raise
        self.runner = AppRunner(state_dir, env=app_env, stop_grace=stop_grace)
        self.ovh: OvhApi = create_emulator(
            state_dir / "ovh",
            self.runner,
            self.faults["ovh"],
            operator_token=operator_token,
            read_token=read_token,
            transition_seconds=transition_seconds,
            probe_period=probe_period,
        )
        self.runpod: RunPodApi = create_runpod(
            state_dir / "runpod",
            self.runner,
            self.faults["runpod"],
            operator_token=operator_token,
            read_token=read_token,
            transition_seconds=transition_seconds,
            probe_period=probe_period,
            no_worker_wait=no_worker_wait,
            proxy_timeout=pod_proxy_timeout,
        )
        config = ollama if ollama is not None else EmulatorConfig()
        if config.models_dir is None:
            config.models_dir = state_dir / "ollama" / "models"
        self.ollama = create_app(config)
        self.mounts: list[tuple[str, ASGIApp]] = [
            ("/ovh", self.ovh),
            ("/runpod", self.runpod),
            ("/ollama", self.ollama),
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closing: asyncio.Task[None] | None = None
        # Whatever happens to the caller, no app process outlives the interpreter.
        self._finalizer = weakref.finalize(self, self.runner.kill_all, 5.0)

    # -- life ---------------------------------------------------------------------------

    def _begin(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        self.ovh.engine.begin()
        self.runpod.engine.begin()

    async def _stop_clouds(self) -> None:
        await asyncio.gather(self.ovh.engine.aclose(), self.runpod.aclose())

    async def aclose(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._stop_clouds())
        await self._closing
        self._finalizer.detach()
        self._lock.close()

    def close(self, timeout: float = 60.0) -> None:
        """Stop every app process, from any thread, whether or not the loop still runs."""
        loop = self._loop
        if (
            loop is not None
            and loop.is_running()
            and not loop.is_closed()
            and threading.get_ident() != self._loop_thread
        ):
            with contextlib.suppress(RuntimeError, TimeoutError):
                asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout)
        if self.runner.processes or not self.runpod.engine.closed:
            self.runpod.engine.kill()
        if self.runner.processes or not self.ovh.engine.closed:
            self.ovh.engine.kill()
        self._finalizer.detach()
        self._lock.close()

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send, self._begin, self.aclose)
            return
        if scope["type"] != "http":
            return
        self._begin()
        path: str = scope["path"]
        if path == CONTROL or path.startswith(CONTROL + "/"):
            await self._control(scope, receive, send, path[len(CONTROL) :].strip("/"))
            return
        for prefix, app in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                inner = dict(scope)
                inner["path"] = path[len(prefix) :] or "/"
                inner["raw_path"] = inner["path"].encode()
                inner["root_path"] = str(scope.get("root_path", "")) + prefix
                await app(inner, receive, send)
                return
        if path == "/":
            await send_json(send, 200, self._index())
            return
        await send_json(send, 404, {"message": f"no such route: {path}", **self._index()})

    def _index(self) -> dict[str, Any]:
        return {
            "apis": {prefix.strip("/"): prefix for prefix, _ in self.mounts},
            "control": CONTROL,
        }

    async def _control(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        method: str = scope["method"]
        replica = _RESTART.fullmatch(name)
        if replica is not None:
            await self._restart_replica(scope, receive, send, replica["id"], replica["index"])
            return
        allowed = {"health": ("GET",), "apps": ("GET",), "faults": ("GET", "POST", "DELETE")}
        if name not in allowed:
            await send_json(send, 404, {"message": f"no such control route: {CONTROL}/{name}"})
            return
        if method not in allowed[name]:
            await send_json(send, 405, {"message": f"{method} is not allowed on {name}"})
            return
        try:
            body = await read_body(receive, limit=1 << 20)
        except ClientDisconnected:
            return
        if name == "health":
            runpod = self.runpod.engine
            counts = {
                "apps": len(self.ovh.engine.apps),
                "endpoints": len(runpod.endpoints),
                "workers": sum(len(group) for group in runpod.fleet.workers.values()),
                "pods": len(runpod.pods),
            }
            await send_json(send, 200, {"status": "ok", **self._index(), **counts})
        elif name == "apps":
            await send_json(send, 200, {"apps": self.apps()})
        elif method == "POST":
            try:
                self.faults.add(json.loads(body or b"{}"))
            except ValueError as exc:
                await send_json(send, 400, {"message": str(exc)})
                return
            await send_json(send, 200, self.faults.to_json())
        else:
            if method == "DELETE":
                self.faults.clear()
            await send_json(send, 200, self.faults.to_json())

    async def _restart_replica(
        self, scope: Scope, receive: Receive, send: Send, app_id: str, index: str
    ) -> None:
        if scope["method"] != "POST":
            await send_json(send, 405, {"message": f"{scope['method']} is not allowed here"})
            return
        try:
            await read_body(receive, limit=1 << 20)
        except ClientDisconnected:
            return
        try:
            replica = self.ovh.engine.restart_replica(app_id, int(index))
        except ApiError as exc:
            await send_json(send, exc.status, {"message": exc.message})
            return
        await send_json(send, 200, {"id": app_id, **replica.to_json()})

    def apps(self) -> list[dict[str, Any]]:
        """Every app (OVH apps, RunPod workers and pods) with what only the sandbox knows:
        its process, log, model store and (OVH) billed time."""
        engine = self.ovh.engine
        out: list[dict[str, Any]] = []
        for record in engine.apps.values():
            process = self.runner.get(record.id)
            group = engine.groups.get(record.id)
            out.append(
                {
                    "api": "ovh",
                    "id": record.id,
                    "name": record.name,
                    "state": record.state,
                    # The states with their dates, as OVH's API shows them for the app.
                    "history": list(record.history),
                    "url": record.url,
                    "pid": process.pid if process else None,
                    "log": str(engine.app_dir(record.id) / "serve.log"),
                    "models": str(engine.models_dir(record)),
                    "billed_seconds": round(record.billed_seconds(), 3),
                    "balancer": group is not None and group.balancer is not None,
                    "replicas": [r.to_json() for r in group.members()] if group else [],
                }
            )
        out.extend(self._runpod_apps())
        return out

    def _runpod_apps(self) -> list[dict[str, Any]]:
        engine = self.runpod.engine
        out: list[dict[str, Any]] = []
        for endpoint_id, group in engine.fleet.workers.items():
            endpoint = engine.endpoints.get(endpoint_id)
            for worker in group.values():
                process = self.runner.get(worker.key)
                out.append(
                    {
                        "api": "runpod",
                        "kind": "worker",
                        "id": worker.id,
                        "endpoint": endpoint_id,
                        "name": endpoint.name if endpoint else None,
                        "state": worker.api_status,
                        "url": f"http://127.0.0.1:{worker.port}" if worker.port else None,
                        "pid": process.pid if process else None,
                        "log": str(engine.directory / "workers" / worker.id / "serve.log"),
                        "models": str(engine.fleet.models_dir(endpoint, worker))
                        if endpoint
                        else None,
                        "detail": worker.detail,
                    }
                )
        for pod in engine.pods.values():
            process = self.runner.get(pod.key)
            out.append(
                {
                    "api": "runpod",
                    "kind": "pod",
                    "id": pod.id,
                    "name": pod.name,
                    "state": pod.status,
                    "url": f"http://127.0.0.1:{pod.port}",
                    "pid": process.pid if process else None,
                    "log": str(engine.pod_life.pod_dir(pod.id) / "serve.log"),
                    "models": str(engine.pod_life.models_dir(pod)),
                    "detail": pod.detail,
                }
            )
        return out


def _lock_state(state_dir: Path) -> IO[str]:
    """Hold the state directory: two sandboxes on it would both resume the same apps on the
    same ports and overwrite each other's state. The lock goes with the process."""
    handle = (state_dir / "sandbox.lock").open("a+")
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - no flock outside Unix
        pass
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(
            f"another sandbox ({holder}) uses the state directory {state_dir}; stop it "
            "or choose another --state-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def create_sandbox(state_dir: Path, **options: Any) -> Sandbox:
    """A sandbox keeping its state in ``state_dir``; options as ``Sandbox``."""
    return Sandbox(state_dir, **options)


@dataclass
class SandboxServer:
    """A sandbox served on loopback, and what a client needs to reach it."""

    sandbox: Sandbox
    url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ovh_url(self) -> str:
        return self.url + "/ovh"

    @property
    def runpod_url(self) -> str:
        return self.url + "/runpod"

    @property
    def ollama_url(self) -> str:
        return self.url + "/ollama"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sandbox.operator_token}"}

    @property
    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.sandbox.read_token}"}


def client_env(url: str, operator_token: str) -> dict[str, str]:
    """What ``ondemand sandbox`` prints: the variables that point a client at it. The
    RunPod ones stand in for ``https://api.runpod.io``, ``https://api.runpod.ai/v2`` and
    ``https://{pod_id}-{port}.proxy.runpod.net`` (a template, filled in by the client)."""
    return {
        "ONDEMAND_SANDBOX_URL": url,
        "OVH_AI_API_URL": f"{url}/ovh",
        "OVH_AI_TOKEN": operator_token,
        "OLLAMA_HOST": f"{url}/ollama",
        "RUNPOD_API_KEY": operator_token,
        "RUNPOD_API_URL": f"{url}/runpod",
        "RUNPOD_ENDPOINT_BASE_URL": f"{url}/runpod/ai/v2",
        "RUNPOD_POD_PROXY_URL": f"{url}/runpod/proxy/{{pod_id}}-{{port}}",
    }


@contextlib.contextmanager
def sandbox_server(state_dir: Path, **options: Any) -> Iterator[SandboxServer]:
    """Serve a sandbox on 127.0.0.1 from a thread until the block ends, then stop every
    app process (for tests: nothing is left behind)."""
    from ondemand.serving import BackgroundServer

    sandbox = create_sandbox(state_dir, **options)
    server = BackgroundServer(sandbox, lifespan="on")
    try:
        server.start()
        yield SandboxServer(sandbox, server.url, client_env(server.url, sandbox.operator_token))
    finally:
        server.stop()
        sandbox.close()
