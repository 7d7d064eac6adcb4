"""The state machine: one asyncio task drives each app through its transitions.

QUEUED and INITIALIZING last ``transition_seconds`` each; SCALING starts the app's server
and lasts until its readiness probe (``spec.probe.path``, else ``/ping``) answers 2xx or
3xx, as a Kubernetes probe counts it (so ``/ping``'s 204 "warming" already counts); then
RUNNING. A server that exits makes the app FAILED with the end of its log. While RUNNING,
readiness is probed again every ``probe_period``: three failures in a row → SCALING with
no replica available, until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from ondemand.processes import port_free
from ondemand.sandbox.apps import AppProcess, AppRunner, log_tail
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.ovh.model import (
    DELETED,
    DELETING,
    FAILED,
    INITIALIZING,
    QUEUED,
    RUNNING,
    SCALING,
    STOPPED,
    STOPPING,
    AppRecord,
)

log = logging.getLogger("ondemand.sandbox")

NO_CAPACITY = (
    "Not enough resources: no {gpu} available in this region right now, or the "
    "project's quota is reached. Try again later or choose another flavor."
)
_POLL = 0.05
_FAILURE_THRESHOLD = 3


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Machine:
    """The transitions; ``OvhEngine`` adds the store and the API's operations."""

    def __init__(
        self, runner: AppRunner, faults: FaultSet, transition_seconds: float, probe_period: float
    ) -> None:
        self.runner = runner
        self.faults = faults
        self.transition_seconds = transition_seconds
        self.probe_period = probe_period
        self.apps: dict[str, AppRecord] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rescale: set[str] = set()

    def save(self) -> None:
        raise NotImplementedError

    def app_dir(self, app_id: str) -> Path:
        raise NotImplementedError

    def models_dir(self, record: AppRecord) -> Path:
        raise NotImplementedError

    def _drive(
        self, record: AppRecord, step: Callable[[AppRecord], Coroutine[Any, Any, None]]
    ) -> None:
        """Replace the app's task: the previous one is cancelled and finishes first."""
        if self.loop is None:
            raise RuntimeError("the OVH emulator was used before begin()")
        if self.closed:
            return  # shutting down: the stored state is resumed by the next sandbox
        previous = self._tasks.pop(record.id, None)
        if previous is not None:
            previous.cancel()
        self._rescale.discard(record.id)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await previous
            try:
                await step(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must show as an app state, not vanish
                log.exception("app %s: transition failed", record.id)
                self._set(record, FAILED, f"sandbox error: {exc}")

        task = self.loop.create_task(run(), name=f"ovh-app-{record.id}")
        self._tasks[record.id] = task
        task.add_done_callback(lambda t: self._forget(record.id, t))

    def _forget(self, app_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(app_id) is task:
            del self._tasks[app_id]

    def _set(self, record: AppRecord, state: str, message: str | None = None) -> None:
        code = "APP_FAILED" if state == FAILED else None
        record.transition(state, message, code)
        if state == RUNNING:
            record.available_replicas = record.desired_replicas()
        self.save()
        log.info("app %s (%s): %s", record.id, record.name, state)

    async def _pause(self, state: str, base: float | None = None) -> None:
        seconds = self.faults.duration(state, self.transition_seconds if base is None else base)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _walk(self, record: AppRecord) -> None:
        await self._pause(QUEUED)
        if self.faults.take_no_capacity():
            gpu = record.spec["resources"].get("gpuModel") or record.spec["resources"]["flavor"]
            self._set(record, FAILED, NO_CAPACITY.format(gpu=gpu))
            return
        self._set(record, INITIALIZING)
        await self._pause(INITIALIZING)
        self._set(record, SCALING)
        if self.closed:
            return
        if not port_free(record.port):
            self._set(
                record,
                FAILED,
                f"cannot start: the app's port 127.0.0.1:{record.port} is taken by another process",
            )
            return
        env = {e["name"]: e["value"] for e in record.spec.get("envVars", [])}
        process = self.runner.launch(
            record.id,
            port=record.port,
            app_env=env,
            models_dir=self.models_dir(record),
            log=self.app_dir(record.id) / "serve.log",
            note=f"(image {record.spec['image']})",
        )
        record.pid = process.pid
        self.save()
        if await self._until_ready(record, process):
            self._set(record, RUNNING)
            await self._watch(record, process)

    def _probe_url(self, record: AppRecord) -> str:
        path = (record.spec.get("probe") or {}).get("path") or "/ping"
        return record.url + path

    async def _until_ready(self, record: AppRecord, process: AppProcess) -> bool:
        strategy = record.spec.get("deploymentStrategy") or {}
        limit = float(strategy.get("progressDeadlineSeconds", 600))
        started = time.monotonic()
        at_least = self.faults.duration(SCALING, 0.0)
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if await self._exited(record, process, "while starting"):
                    return False
                ok, last = await _probe(client, self._probe_url(record))
                elapsed = time.monotonic() - started
                if ok and elapsed >= at_least:
                    return True
                if elapsed > limit:
                    await self.runner.stop(record.id, grace=5)
                    record.pid = None
                    self._set(
                        record,
                        FAILED,
                        f"the app did not become ready within {limit:.0f}s "
                        f"(readiness probe {self._probe_url(record)}: {last})",
                    )
                    return False
                await asyncio.sleep(_POLL)

    async def _watch(self, record: AppRecord, process: AppProcess) -> None:
        """While up: notice an exit, re-probe readiness (3 failures → SCALING with no
        replica available, success → RUNNING), and pass through SCALING on a rescale."""
        failures = 0
        next_probe = time.monotonic() + self.probe_period
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while not await self._exited(record, process, "while running"):
                if record.id in self._rescale:
                    self._rescale.discard(record.id)
                    self._set(record, SCALING)
                    await self._pause(SCALING, self.transition_seconds)
                    self._set(record, RUNNING)
                if time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + self.probe_period
                    ok, last = await _probe(client, self._probe_url(record))
                    failures = 0 if ok else failures + 1
                    if ok and record.state == SCALING:
                        self._set(record, RUNNING)
                    elif failures >= _FAILURE_THRESHOLD and record.state == RUNNING:
                        self._set(record, SCALING, f"no replica is ready (readiness probe: {last})")
                await asyncio.sleep(_POLL)

    async def _exited(self, record: AppRecord, process: AppProcess, when: str) -> bool:
        code = process.exit_status()
        if code is None:
            return False
        tail = log_tail(process.log)
        await self.runner.stop(record.id, grace=0)
        record.pid = None
        message = f"the app's server exited with status {code} {when}"
        self._set(record, FAILED, f"{message}; end of its log:\n{tail}" if tail else message)
        return True

    def _grace(self, record: AppRecord) -> float | None:
        strategy = record.spec.get("deploymentStrategy") or {}
        grace = strategy.get("terminationGracePeriodSeconds")
        return float(grace) if grace is not None else None

    async def _stopping(self, record: AppRecord) -> None:
        await asyncio.gather(
            self.runner.stop(record.id, self._grace(record)), self._pause(STOPPING)
        )
        record.pid = None
        self._set(record, STOPPED)

    async def _deleting(self, record: AppRecord) -> None:
        await asyncio.gather(
            self.runner.stop(record.id, self._grace(record)), self._pause(DELETING)
        )
        record.pid = None
        self.apps.pop(record.id, None)
        self._set(record, DELETED)
        shutil.rmtree(self.app_dir(record.id), ignore_errors=True)


async def _probe(client: httpx.AsyncClient, url: str) -> tuple[bool, str]:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}"
    return 200 <= response.status_code < 400, f"answered {response.status_code}"
