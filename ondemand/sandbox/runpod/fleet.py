"""Serverless workers: each one a real ``ondemand serve``, probed as the load balancer
probes it, and the scaler that starts and stops them.

A worker is placed (``transition_seconds``, or the ``slow`` fault's ``INITIALIZING``: the
image pull and boot before its server starts), then its server starts on a loopback port
of its own with the endpoint's ``env``. The health probe hits ``HEALTH_CHECK_PATH``
(default ``/ping``) every ``probe_period`` (more often while initializing): 200 = ready
(routable), 204 or no answer yet = initializing, anything else = unhealthy.
``PORT_HEALTH`` is mapped to the worker's port like ``PORT`` (the runner gives each server
one port), so the probe and the traffic reach the same server.

As on the platform, a LOAD_BALANCER worker whose endpoint does not set both ``PORT`` and
``PORT_HEALTH`` explicitly, or does not list ``<PORT>/http`` in ``ports``, runs but is never
probed ready: INITIALIZING forever, and the gateway never routes to it.

Scaling (REQUEST_COUNT): desired = clamp(ceil(demand / requestCount), workers.min,
workers.max), demand = requests waiting for a worker + requests in flight. Workers above
the desired count stop once idle for ``workers.idleTimeout`` seconds; above ``workers.max``
(after an update) at once when idle. A worker on an older release (after a PATCH of the
image, env, …) is replaced when idle. A server that exits makes its worker UNHEALTHY and is
started again after a pause: the crash loop the ``crash`` fault produces on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from ondemand.processes import free_port
from ondemand.sandbox.apps import AppProcess, AppRunner, cancel_and_wait, log_tail
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.runpod import catalog
from ondemand.sandbox.runpod.model import (
    INITIALIZING,
    LOAD_BALANCER,
    READY,
    THROTTLED,
    UNHEALTHY,
    Endpoint,
    Worker,
    iso,
    new_id,
)

log = logging.getLogger("ondemand.sandbox")

_TICK = 0.05
_FAST_PROBE = 0.05
# ``ondemand serve`` refuses this value and exits with status 2 before it listens: how the
# ``crash`` fault makes a worker crash-loop with a real process and a real log.
CRASH_ENV = {"ONDEMAND_DRAIN_TIMEOUT": "sandbox-crash-fault"}


@dataclass
class Jobs:
    """The ``jobs`` block of ``/health``: for a load balancer, the gateway's requests."""

    completed: int = 0
    failed: int = 0
    waiting: int = 0

    def to_api(self, in_progress: int) -> dict[str, int]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "inProgress": in_progress,
            "inQueue": self.waiting,
            "retried": 0,
        }


def routable(endpoint: Endpoint) -> bool:
    """Whether the load balancer's health probe can find the worker's server."""
    if endpoint.type != LOAD_BALANCER:
        return True
    env = endpoint.env
    port = env.get("PORT", "").strip()
    if not port or not env.get("PORT_HEALTH", "").strip():
        return False
    return f"{port}/http" in endpoint.config.get("ports", [])


def _gpu_type(endpoint: Endpoint) -> str:
    gpu = endpoint.config["gpu"]
    excluded = set(gpu.get("excludedTypes", []))
    for pool in gpu["pools"]:
        for type_id in catalog.POOLS[pool]:
            if type_id not in excluded:
                return type_id
    return catalog.POOLS[gpu["pools"][0]][0]


class Fleet:
    """The workers of every endpoint. Runs on the emulator's event loop."""

    def __init__(
        self,
        runner: AppRunner,
        faults: FaultSet,
        directory: Path,
        endpoints: Mapping[str, Endpoint],
        volume_dir: Callable[[str], Path],
        volume_dc: Callable[[str], str | None],
        *,
        transition_seconds: float,
        probe_period: float,
    ) -> None:
        self.runner = runner
        self.faults = faults
        self.directory = directory
        self.endpoints = endpoints
        self.volume_dir = volume_dir
        self.volume_dc = volume_dc
        self.transition_seconds = transition_seconds
        self.probe_period = probe_period
        self.workers: dict[str, dict[str, Worker]] = {}
        self.demand: dict[str, int] = {}
        self.jobs: dict[str, Jobs] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # -- life -------------------------------------------------------------------------

    def begin(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ticker = loop.create_task(self._tick(), name="runpod-scaler")

    async def aclose(self) -> None:
        self.closed = True
        await cancel_and_wait([self._ticker, *self._tasks.values()])
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        keys = [w.key for group in self.workers.values() for w in group.values()]
        await asyncio.gather(*(self.runner.stop(key) for key in keys), return_exceptions=True)
        self.workers.clear()

    def kill(self) -> None:
        self.closed = True
        for task in (self._ticker, *self._tasks.values()):
            if task is not None:
                task.cancel()

    # -- what the API and the gateway ask -----------------------------------------------

    def of(self, endpoint_id: str) -> list[Worker]:
        return list(self.workers.get(endpoint_id, {}).values())

    def jobs_of(self, endpoint_id: str) -> Jobs:
        return self.jobs.setdefault(endpoint_id, Jobs())

    def forget(self, endpoint_id: str) -> None:
        """The endpoint is deleted: stop its workers."""
        for worker in self.of(endpoint_id):
            self._retire(worker, "the endpoint was deleted")
        self.workers.pop(endpoint_id, None)
        self.demand.pop(endpoint_id, None)
        self.jobs.pop(endpoint_id, None)

    async def acquire(self, endpoint_id: str, wait: float) -> Worker | None:
        """A ready worker for one request (the least busy), starting workers as the
        scaler wants; None when none is ready within ``wait`` seconds or max is 0."""
        deadline = time.monotonic() + wait
        self.demand[endpoint_id] = self.demand.get(endpoint_id, 0) + 1
        jobs = self.jobs_of(endpoint_id)
        jobs.waiting += 1
        found: Worker | None = None
        try:
            while not self.closed:
                endpoint = self.endpoints.get(endpoint_id)
                if endpoint is None or endpoint.workers_max == 0:
                    break
                self.reconcile(endpoint)
                ready = [w for w in self.of(endpoint_id) if w.status == READY and not w.stopping]
                if ready:
                    found = min(ready, key=lambda w: w.inflight)
                    found.inflight += 1
                    found.last_used = time.monotonic()
                    return found
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(_TICK)
            return None
        finally:
            jobs.waiting -= 1
            if found is None:
                self.demand[endpoint_id] = max(0, self.demand.get(endpoint_id, 1) - 1)
                jobs.failed += 1

    def release(self, worker: Worker, ok: bool) -> None:
        worker.inflight = max(0, worker.inflight - 1)
        worker.last_used = time.monotonic()
        self.demand[worker.endpoint_id] = max(0, self.demand.get(worker.endpoint_id, 1) - 1)
        jobs = self.jobs_of(worker.endpoint_id)
        if ok:
            jobs.completed += 1
        else:
            jobs.failed += 1

    # -- scaling ----------------------------------------------------------------------

    async def _tick(self) -> None:
        while not self.closed:
            for endpoint in list(self.endpoints.values()):
                try:
                    self.reconcile(endpoint)
                except Exception:  # one broken endpoint must not stop the others scaling
                    log.exception("runpod endpoint %s: scaling failed", endpoint.id)
            await asyncio.sleep(_TICK)

    def desired(self, endpoint: Endpoint) -> int:
        demand = self.demand.get(endpoint.id, 0)
        wanted = math.ceil(demand / endpoint.per_worker) if demand else 0
        return max(endpoint.workers_min, min(endpoint.workers_max, wanted))

    def reconcile(self, endpoint: Endpoint) -> None:
        if self.closed or self.loop is None:
            return
        now = time.monotonic()
        for worker in self.of(endpoint.id):
            if worker.version != endpoint.version and not worker.inflight:
                self._retire(worker, "replaced by the endpoint's new release")
        live = self.of(endpoint.id)
        desired = self.desired(endpoint)
        # Not-ready workers go first, then the longest idle.
        spare = sorted(
            (w for w in live if not w.inflight),
            key=lambda w: (w.status == READY, w.last_used),
        )
        count = len(live)
        for worker in spare:
            if count <= desired:
                break
            if count > endpoint.workers_max or now - worker.last_used >= endpoint.idle_timeout:
                self._retire(worker, "scaled down")
                count -= 1
        for _ in range(desired - count):
            self._spawn(endpoint)

    def _spawn(self, endpoint: Endpoint) -> None:
        volumes = endpoint.config.get("networkVolumes") or []
        dcs = endpoint.config.get("dataCenterIds") or []
        place = self.volume_dc(volumes[0]) if volumes else None
        worker = Worker(
            id=new_id(14),
            endpoint_id=endpoint.id,
            version=endpoint.version,
            gpu_type_id=_gpu_type(endpoint),
            data_center_id=place or (dcs[0] if dcs else catalog.DEFAULT_DATA_CENTER),
            gpu_count=int(endpoint.config["gpu"].get("count", 1)),
            image=endpoint.config.get("image") or None,
            routable=routable(endpoint),
        )
        self.workers.setdefault(endpoint.id, {})[worker.id] = worker
        if self.faults.take("throttled"):
            worker.throttled = True
            worker.status = THROTTLED
            worker.detail = "no GPU of the endpoint's pools is free in its data centers"
            log.info("runpod worker %s (%s): throttled", worker.id, endpoint.id)
            return
        worker.crashing = self.faults.take("crash")
        assert self.loop is not None
        task = self.loop.create_task(self._run(endpoint, worker), name=f"runpod-{worker.id}")
        self._tasks[worker.id] = task
        task.add_done_callback(lambda t: self._forget_task(worker.id, t))

    def _forget_task(self, worker_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(worker_id) is task:
            del self._tasks[worker_id]

    def _retire(self, worker: Worker, why: str) -> None:
        if worker.stopping:
            return
        worker.stopping = True
        group = self.workers.get(worker.endpoint_id, {})
        group.pop(worker.id, None)
        task = self._tasks.pop(worker.id, None)
        log.info("runpod worker %s (%s): stopping, %s", worker.id, worker.endpoint_id, why)
        if self.loop is None:
            return

        async def stop() -> None:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.runner.stop(worker.key)
            shutil.rmtree(self.directory / "workers" / worker.id, ignore_errors=True)

        stopping = self.loop.create_task(stop(), name=f"runpod-stop-{worker.id}")
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    # -- one worker -------------------------------------------------------------------

    def models_dir(self, endpoint: Endpoint, worker: Worker) -> Path:
        """On the network volume (``/runpod-volume``) when the endpoint has one, so every
        worker shares its pulls; else on the worker's own disk, gone when it stops."""
        volumes = endpoint.config.get("networkVolumes") or []
        if volumes:
            return self.volume_dir(volumes[0]) / "models"
        return self.directory / "workers" / worker.id / "models"

    async def _run(self, endpoint: Endpoint, worker: Worker) -> None:
        placing = self.faults.duration(INITIALIZING, self.transition_seconds)
        if placing > 0:
            await asyncio.sleep(placing)
        env = {**endpoint.env, **(CRASH_ENV if worker.crashing else {})}
        log_path = self.directory / "workers" / worker.id / "serve.log"
        while not self.closed and not worker.stopping:
            worker.port = free_port()
            process = self.runner.launch(
                worker.key,
                port=worker.port,
                app_env=env,
                models_dir=self.models_dir(endpoint, worker),
                log=log_path,
                note=f"(endpoint {endpoint.id}{', crash fault' * worker.crashing})",
            )
            worker.pid = process.pid
            if worker.started is None:
                worker.started = time.monotonic()
                worker.started_at = iso()
            code = await self._watch(endpoint, worker, process)
            tail = log_tail(process.log, lines=4, chars=400)
            await self.runner.stop(worker.key, grace=0)
            worker.pid = None
            worker.crashes += 1
            worker.status = UNHEALTHY
            worker.detail = f"the worker's server exited with status {code}: {tail}".strip()
            log.info("runpod worker %s: %s", worker.id, worker.detail)
            await asyncio.sleep(max(0.2, self.transition_seconds))

    async def _watch(self, endpoint: Endpoint, worker: Worker, process: AppProcess) -> int:
        """Probe until the server exits; returns its exit status."""
        path = endpoint.env.get("HEALTH_CHECK_PATH", "").strip() or "/ping"
        if not path.startswith("/"):
            path = "/" + path
        url = f"http://127.0.0.1:{worker.port}{path}"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                code = process.exit_status()
                if code is not None:
                    return code
                if worker.routable:
                    worker.status = _judge(await _probe(client, url), worker.status)
                elif worker.status != UNHEALTHY:
                    worker.status = INITIALIZING
                fast = worker.status != READY
                await asyncio.sleep(_FAST_PROBE if fast else self.probe_period)


def _judge(answer: int | None, before: str) -> str:
    """The probe's verdict: 200 ready, 204 initializing, anything else unhealthy; no
    answer yet counts as initializing until the server has answered once."""
    if answer == 200:
        return READY
    if answer == 204 or (answer is None and before in (INITIALIZING, THROTTLED)):
        return INITIALIZING
    return UNHEALTHY


async def _probe(client: httpx.AsyncClient, url: str) -> int | None:
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return None
    return response.status_code
