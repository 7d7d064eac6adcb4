"""``ondemand serve``: Ollama supervised on loopback, models preloaded and warm, the proxy
in front, and a ``/ping`` that says honestly whether the models can be used.

/ping: 204 while Ollama starts and models are pulled and loaded; 200 only once every model
is warm (and, with ``ONDEMAND_REQUIRE_GPU=1``, in GPU memory); 503 when a preload failed,
Ollama is down, or the server is draining before it stops.

Warm is checked, not assumed: every ``ONDEMAND_RESIDENCY_INTERVAL`` the server asks Ollama's
``/api/ps`` whether the preloaded models are still loaded. One that is gone (unloaded by an
admin key, evicted by Ollama) is loaded again, and /ping answers 204 until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ondemand.modelnames import canonical
from ondemand.proxy.app import HealthApp, ProxyApp
from ondemand.proxy.policy import Residency, keep_alive_seconds
from ondemand.proxy.workers import attach
from ondemand.serve.models import ModelState, Phase
from ondemand.serve.preload import Preloader
from ondemand.serve.supervisor import Supervisor
from ondemand.serving import bind, embedded_server, listeners

if TYPE_CHECKING:
    from ondemand.asgi import ASGIApp
    from ondemand.proxy.auth import Identity
    from ondemand.serve.settings import ServeSettings

log = logging.getLogger("ondemand.serve")

STARTING, PRELOADING, READY = "starting", "preloading", "ready"
REWARMING = "rewarming"  # ready before, now loading a model again that Ollama dropped
FAILED, OLLAMA_DOWN, DRAINING = "failed", "ollama-down", "draining"
_INITIALIZING = frozenset({STARTING, PRELOADING, REWARMING})


class ServeState:
    """Where the server is on its way to ready; /ping and /ondemand/status read it."""

    def __init__(self, models: tuple[str, ...]) -> None:
        self.names = models
        self.models = [ModelState(m) for m in models]
        self.phase = STARTING
        self.problems: list[str] = []
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self.supervisor: Supervisor | None = None

    def reset_models(self) -> None:
        self.models = [ModelState(m) for m in self.names]
        self.problems = []

    async def health(self) -> tuple[int, Mapping[str, object]]:
        if self.phase in _INITIALIZING:
            return 204, {}
        if self.phase == READY:
            return 200, {"status": READY}
        return 503, {"status": self.phase}

    def status_extra(self, identity: Identity) -> dict[str, object]:
        del identity  # every key may see the server's models and phase
        server: dict[str, object] = {
            "phase": self.phase,
            "models": [m.view() for m in self.models],
            "problems": self.problems,
            "ollama": self.supervisor.view() if self.supervisor else None,
        }
        if self.ready_after is not None:
            server["ready_after_seconds"] = round(self.ready_after, 3)
        return {"server": server}


def _ollama_default_keep_alive(settings: ServeSettings) -> str | int | None:
    """What Ollama should use when a request names no keep_alive (every /v1 request)."""
    policy = settings.proxy.keep_alive
    if policy.default is not None:
        return policy.default
    # Ollama's own default is 5 minutes; a lower cap must hold for /v1 as well.
    if policy.cap_seconds is not None and policy.cap_seconds < 300:
        return policy.cap
    return None


class Serve:
    def __init__(self, settings: ServeSettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.env = env
        self.state = ServeState(settings.models)
        self.supervisor = Supervisor(
            settings.ollama_bin,
            settings.ollama_port,
            env,
            on_up=self._on_ollama_up,
            on_down=self._on_ollama_down,
            keep_alive=_ollama_default_keep_alive(settings),
        )
        self.state.supervisor = self.supervisor
        self._preload: asyncio.Task[None] | None = None
        self._rewarm: asyncio.Task[None] | None = None
        self._rewarms_done = 0  # re-warms finished, however they ended
        self._added: set[asyncio.Task[None]] = set()
        self.proxy: ProxyApp | None = None

    async def _on_ollama_up(self) -> None:
        if self.state.phase == DRAINING:
            return
        self.state.phase = PRELOADING
        if self.proxy is not None:
            self.proxy.activity.mark_ready(False)
        self.state.reset_models()
        self._preload = asyncio.ensure_future(self._run_preload())

    def _on_ollama_down(self, reason: str) -> None:
        for task in (self._preload, self._rewarm):
            if task is not None:
                task.cancel()
        if self.state.phase != DRAINING:
            self.state.phase = OLLAMA_DOWN
            self.state.problems = [f"Ollama {reason}"]

    async def _run_preload(self) -> None:
        state = self.state
        if state.models:
            names = ", ".join(m.name for m in state.models)
            log.info("preloading %d model(s): %s", len(state.models), names)
        try:
            problems = await Preloader(
                self.supervisor.url, state.models, self.settings.policy
            ).run()
        except httpx.HTTPError as exc:
            # Ollama went away mid-run; the supervisor restarts it and preloads again.
            log.warning("preload interrupted: %s", exc)
            return
        if state.phase != PRELOADING:
            return
        if problems:
            state.phase, state.problems = FAILED, problems
            if self.proxy is not None:
                self.proxy.activity.warming = False  # it never will be ready: idle from here
            for problem in problems:
                log.error("not ready: %s", problem)
            log.error("/ping answers 503 until the configuration is fixed and the server restarts")
            return
        state.phase = READY
        if self.proxy is not None:
            self.proxy.activity.mark_ready(True)
        state.ready_after = time.monotonic() - state.started
        log.info("ready: %d model(s) warm after %.1fs", len(state.models), state.ready_after)

    def residency(self) -> Residency | None:
        """The preloaded models (all but the failed ones) and the keep_alive they keep."""
        models = frozenset(m.key for m in self.state.models if m.phase is not Phase.FAILED)
        return Residency(models, self.settings.policy.keep_alive) if models else None

    async def _watch_residency(self) -> None:
        interval = self.settings.residency_interval
        while True:
            await asyncio.sleep(interval)
            if self.state.phase not in (READY, REWARMING):
                continue
            try:
                await self.check_residency()
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # Ollama down is the supervisor's to notice; an odd answer waits a round.
                log.debug("residency check skipped: %s", exc)

    def _rewarming(self) -> bool:
        return self._rewarm is not None and not self._rewarm.done()

    async def check_residency(self) -> None:
        """Load again every warm model that Ollama no longer holds; /ping says 204 till then.

        A model being loaded is present: Ollama lists it in /api/ps from the start of its
        load (a reload for a request's other ``num_ctx`` included), and while a re-warm of
        ours is under way no second one starts."""
        if self._rewarming():
            return
        if self.state.phase == REWARMING:
            # The last re-warm was cut off by an error while Ollama stayed up (a restart
            # of Ollama would have preloaded everything): /ping still says 204; try again.
            stuck = [m for m in self.state.models if m.phase is Phase.LOADING]
            if stuck:
                log.warning("loading again: %s", ", ".join(m.name for m in stuck))
                self._rewarm = asyncio.ensure_future(self._run_rewarm(stuck))
            else:
                self.state.phase = READY
            return
        rewarms_done = self._rewarms_done
        async with httpx.AsyncClient(base_url=self.supervisor.url, timeout=10.0) as client:
            response = await client.get("/api/ps")
            response.raise_for_status()
            items = response.json().get("models") or []
        loaded = {canonical(m.get("model") or m["name"]) for m in items}
        state = self.state
        if state.phase != READY or self._rewarming() or self._rewarms_done != rewarms_done:
            # A re-warm began or ended while Ollama answered: the answer may predate its
            # load, and would have the model loaded a second time.
            return
        for model in state.models:
            if model.phase is Phase.UNLOADED and model.key in loaded:
                model.phase = Phase.WARM  # a request loaded it again
        gone = [m for m in state.models if m.phase is Phase.WARM and m.key not in loaded]
        if not gone:
            return
        names = ", ".join(m.name for m in gone)
        if not math.isinf(keep_alive_seconds(self.settings.policy.keep_alive) or 0.0):
            # A finite ONDEMAND_KEEP_ALIVE lets Ollama unload idle models: that is the
            # policy at work, and the next request loads the model again.
            log.info("%s unloaded by Ollama after ONDEMAND_KEEP_ALIVE", names)
            for model in gone:
                model.phase = Phase.UNLOADED
            return
        log.warning(
            "%s no longer loaded in Ollama (unloaded or evicted): loading again; /ping "
            "answers 204 until then",
            names,
        )
        for model in gone:
            model.phase = Phase.LOADING
        state.phase = REWARMING
        self._rewarm = asyncio.ensure_future(self._run_rewarm(gone))

    async def _run_rewarm(self, models: list[ModelState]) -> None:
        state = self.state
        try:
            problems = await Preloader(self.supervisor.url, models, self.settings.policy).run()
        except httpx.HTTPError as exc:
            # Ollama went away (its restart preloads every model) or answered oddly: the
            # next residency check tries again.
            log.warning("loading again interrupted: %s", exc)
            return
        finally:
            self._rewarms_done += 1
        if state.phase != REWARMING:
            return
        if problems:
            state.phase, state.problems = FAILED, problems
            if self.proxy is not None:
                self.proxy.activity.warming = False  # as after a failed preload
            for problem in problems:
                log.error("not ready: %s", problem)
            return
        state.phase = READY
        log.info("ready again: %s loaded", ", ".join(m.name for m in models))

    async def add_models(self, names: list[str]) -> Mapping[str, object]:
        """More models for the running server (``up`` with a longer model list): pulled and
        warmed beside the others, ``/ping`` staying 200 for the models already warm. One
        that fails is dropped from the list a restart preloads, so it cannot take the
        server down with it; its error stays in the status until the next try."""
        state = self.state
        # A model Ollama let go after a finite keep_alive is warmed again when asked for.
        have = {m.key for m in state.models if m.phase not in (Phase.FAILED, Phase.UNLOADED)}
        fresh = [ModelState(n) for n in dict.fromkeys(names) if canonical(n) not in have]
        if fresh:
            fresh_keys = {m.key for m in fresh}
            state.models = [m for m in state.models if m.key not in fresh_keys] + fresh
            state.names = (*(n for n in state.names if canonical(n) not in fresh_keys),
                           *(m.name for m in fresh))  # fmt: skip
            log.info("adding %d model(s): %s", len(fresh), ", ".join(m.name for m in fresh))
            if state.phase == READY:
                task = asyncio.ensure_future(self._warm_added(fresh))
                self._added.add(task)
                task.add_done_callback(self._added.discard)
            # Otherwise the preload under way, or the next one after Ollama restarts,
            # includes them.
        wanted = {canonical(n) for n in names}
        return {"models": [m.view() for m in state.models if m.key in wanted]}

    async def _warm_added(self, models: list[ModelState]) -> None:
        try:
            problems = await Preloader(self.supervisor.url, models, self.settings.policy).run()
        except httpx.HTTPError as exc:
            log.warning("adding models interrupted: %s", exc)
            return  # Ollama went away: its restart preloads them with the rest
        failed = {m.key for m in models if m.phase is Phase.FAILED}
        if failed:
            self.state.names = tuple(n for n in self.state.names if canonical(n) not in failed)
        for problem in problems:
            log.error("model not added: %s", problem)

    async def run(self) -> int:
        settings = self.settings
        # Bind before anything starts, so a taken port fails at once with a clear message.
        main_sock, *theirs = listeners(settings.host, settings.port, settings.proxy.workers)
        proxy = ProxyApp(
            settings.proxy,
            health=self.state.health,
            status_extra=self.state.status_extra,
            add_models=self.add_models,
            residency=self.residency,
        )
        self.proxy = proxy
        proxy.activity.mark_ready(False)
        # ONDEMAND_PROXY_WORKERS: more processes on the port, counting here.
        relay = attach(proxy, theirs, self.env, grace=settings.drain_timeout)
        from ondemand.serve.selfstop import SelfStop

        selfstop = SelfStop.from_settings(proxy, settings)
        sockets: list[tuple[socket.socket, ASGIApp]] = [(main_sock, proxy)]
        if settings.health_port != settings.port:
            sockets.append(
                (bind(settings.host, settings.health_port), HealthApp(self.state.health))
            )
        servers: list[Any] = []
        for index, (_, app) in enumerate(sockets):
            servers.append(
                embedded_server(
                    app,
                    lifespan="on" if index == 0 else "off",
                    graceful_timeout=settings.drain_timeout,
                    limits=settings.proxy.door,
                    counts=proxy.door,
                    settle=index == 0,
                )
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ports = sorted({settings.port, settings.health_port})
        log.info(
            "serving on %s port(s) %s; Ollama %s on 127.0.0.1:%d",
            settings.host, ", ".join(map(str, ports)), settings.ollama_bin, settings.ollama_port,
        )  # fmt: skip
        supervising = asyncio.ensure_future(self.supervisor.run())
        residency = (
            asyncio.ensure_future(self._watch_residency())
            if settings.residency_interval > 0
            else None
        )
        watching = asyncio.ensure_future(selfstop.run()) if selfstop is not None else None
        if selfstop is not None:
            log.info(
                "this server stops its own deployment when idle %s with no live lease, or "
                "older than %s",
                f"{selfstop.idle_seconds:.0f}s" if selfstop.idle_seconds else "(never)",
                f"{selfstop.max_lifetime_seconds:.0f}s" if selfstop.max_lifetime_seconds
                else "(never)",
            )  # fmt: skip
        serving = [
            asyncio.ensure_future(server.serve(sockets=[sock, *(relay if index == 0 else ())]))
            for index, (server, (sock, _)) in enumerate(zip(servers, sockets, strict=True))
        ]
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopped, *serving], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: draining in-flight requests (up to %.0fs)", settings.drain_timeout)
        self.state.phase = DRAINING
        proxy.stopping()
        for server in servers:
            server.should_exit = True
        await asyncio.wait(serving, timeout=settings.drain_timeout + 5)
        for task in (self._preload, self._rewarm, residency):
            if task is not None:
                task.cancel()
        for task in self._added:
            task.cancel()
        if watching is not None:
            watching.cancel()
        await self.supervisor.stop()
        supervising.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervising
        stopped.cancel()
        log.info("stopped")
        return 0
