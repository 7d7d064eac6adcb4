"""Pods: each one a real ``ondemand serve`` while it runs, on a loopback port reserved for
its whole life (so its proxy URL never changes).

A create or a ``start`` walks PROVISIONING (``transition_seconds``) → STARTING (its server
starts; ``transition_seconds`` more) → RUNNING. RUNNING means the container runs, not that
the service answers: the pod proxy gives 502 until the server listens, as the platform's
does for the first 30-60 s. ``stop`` → EXITED at once (the server is stopped behind it),
``restart`` → STARTING → RUNNING, ``terminate`` (or DELETE) → TERMINATED, then gone (404).
A server that exits on its own makes the pod ERROR (EXITED on status 0), with the end of
its log in the sandbox's view of the pod.

Storage follows the platform: without a mount the models live on the container disk,
wiped at every stop; ``mounts.persistent`` keeps them across stop and start (gone with the
pod); ``mounts.network`` keeps them on the network volume, shared and kept after the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ondemand.processes import port_free
from ondemand.sandbox.apps import AppProcess, AppRunner, cancel_and_wait, log_tail
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.runpod.model import (
    ERROR,
    EXITED,
    PROVISIONING,
    RUNNING,
    STARTING,
    TERMINATED,
    Pod,
    iso,
)
from ondemand.sandbox.runpod.problems import ApiError

log = logging.getLogger("ondemand.sandbox")

ZERO_GPUS = (
    "There are not enough free GPUs on the host machine to start this pod: the GPU was "
    "rented by someone else while the pod was stopped. Start it later, or terminate it "
    "and deploy a new pod (a network volume keeps its data)."
)
Step = Callable[[Pod], Coroutine[Any, Any, None]]


class PodLife:
    """The pods and their transitions. Runs on the emulator's event loop."""

    def __init__(
        self,
        runner: AppRunner,
        faults: FaultSet,
        directory: Path,
        volume_dir: Callable[[str], Path],
        save: Callable[[], None],
        *,
        transition_seconds: float,
    ) -> None:
        self.runner = runner
        self.faults = faults
        self.directory = directory
        self.volume_dir = volume_dir
        self.save = save
        self.transition_seconds = transition_seconds
        self.pods: dict[str, Pod] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def pod_dir(self, pod_id: str) -> Path:
        return self.directory / "pods" / pod_id

    def models_dir(self, pod: Pod) -> Path:
        mounts = pod.spec.get("mounts") or {}
        if mounts.get("network"):
            return self.volume_dir(mounts["network"][0]["volumeId"]) / "models"
        if mounts.get("persistent"):
            return self.pod_dir(pod.id) / "volume" / "models"
        return self.pod_dir(pod.id) / "container" / "models"

    # -- life ---------------------------------------------------------------------------

    def begin(self, loop: asyncio.AbstractEventLoop, resume: list[str]) -> None:
        """Bind to the loop; the pods that were up when the sandbox stopped provision
        again on their old port."""
        self.loop = loop
        for pod_id in resume:
            pod = self.pods.get(pod_id)
            if pod is not None:
                self._set(pod, PROVISIONING, "provisioned again after a sandbox restart")
                self._drive(pod, self._walk)

    async def aclose(self) -> None:
        self.closed = True
        await cancel_and_wait(list(self._tasks.values()))
        await asyncio.gather(
            *(self.runner.stop(pod.key) for pod in self.pods.values()), return_exceptions=True
        )
        for pod in self.pods.values():
            pod.pid = None

    def kill(self) -> None:
        self.closed = True
        for task in self._tasks.values():
            task.cancel()
        for pod in self.pods.values():
            pod.pid = None

    # -- operations ---------------------------------------------------------------------

    def create(self, pod: Pod) -> None:
        self.pods[pod.id] = pod
        self._set(pod, PROVISIONING)
        self._drive(pod, self._walk)

    def act(self, pod: Pod, action: str) -> None:
        if action not in pod.actions():
            locked = " (the pod is locked)" if pod.spec.get("locked") else ""
            raise ApiError(
                409,
                f"cannot {action} pod {pod.id}: it is {pod.status}{locked}; allowed now: "
                f"{', '.join(pod.actions()) or 'nothing'}",
            )
        if action == "start":
            if self.faults.take("zero_gpus"):
                raise ApiError(400, ZERO_GPUS)
            self._set(pod, PROVISIONING)
            self._drive(pod, self._walk)
        elif action == "stop":
            self._set(pod, EXITED, "stopped")
            self._drive(pod, self._stopping)
        elif action == "restart":
            self._set(pod, STARTING, "restarting")
            self._drive(pod, self._restarting)
        else:
            self.terminate(pod)

    def terminate(self, pod: Pod) -> None:
        if pod.status == TERMINATED:
            raise ApiError(404, f"pod {pod.id} not found")
        self._set(pod, TERMINATED, "terminated")
        self._drive(pod, self._terminating)

    # -- transitions --------------------------------------------------------------------

    def _drive(self, pod: Pod, step: Step) -> None:
        """Replace the pod's task: the previous one is cancelled and finishes first."""
        if self.loop is None:
            raise RuntimeError("the RunPod emulator was used before begin()")
        if self.closed:
            return
        previous = self._tasks.pop(pod.id, None)
        if previous is not None:
            previous.cancel()

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await previous
            try:
                await step(pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must show as a pod status, not vanish
                log.exception("runpod pod %s: transition failed", pod.id)
                self._set(pod, ERROR, f"sandbox error: {exc}")

        task = self.loop.create_task(run(), name=f"runpod-pod-{pod.id}")
        self._tasks[pod.id] = task
        task.add_done_callback(lambda t: self._forget(pod.id, t))

    def _forget(self, pod_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(pod_id) is task:
            del self._tasks[pod_id]

    def _set(self, pod: Pod, status: str, detail: str = "") -> None:
        pod.status = status
        pod.detail = detail
        if status == RUNNING:
            pod.up_since = time.monotonic()
            pod.started_at = iso()
            pod.tcp_ports = {
                entry.split("/")[0]: random.randint(10000, 60000)
                for entry in pod.spec.get("ports", [])
                if entry.endswith("/tcp")
            }
        elif status != STARTING:
            pod.up_since = None
        self.save()
        log.info("runpod pod %s (%s): %s", pod.id, pod.name, status)

    async def _pause(self, state: str) -> None:
        seconds = self.faults.duration(state, self.transition_seconds)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _walk(self, pod: Pod) -> None:
        await self._pause(PROVISIONING)
        self._set(pod, STARTING)
        await self._boot(pod)

    async def _boot(self, pod: Pod) -> None:
        # A start right after a stop cancels the stop's task: its server may still drain.
        await self.runner.stop(pod.key)
        if not port_free(pod.port):
            taken = f"the pod's port 127.0.0.1:{pod.port} is taken by another process"
            self._set(pod, ERROR, taken)
            return
        process = self.runner.launch(
            pod.key,
            port=pod.port,
            app_env=dict(pod.spec.get("env") or {}),
            models_dir=self.models_dir(pod),
            log=self.pod_dir(pod.id) / "serve.log",
            note=f"(pod {pod.name}, image {pod.spec.get('image')})",
        )
        pod.pid = process.pid
        self.save()
        await self._pause(STARTING)
        if await self._exited(pod, process):
            return
        self._set(pod, RUNNING)
        # Polled: waiting on the exit would reap the process before its group is killed.
        while not await self._exited(pod, process):  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    async def _exited(self, pod: Pod, process: AppProcess) -> bool:
        code = process.exit_status()
        if code is None:
            return False
        tail = log_tail(process.log, lines=6, chars=600)
        await self.runner.stop(pod.key, grace=0)
        pod.pid = None
        detail = f"the container exited with status {code}" + (f": {tail}" if tail else "")
        self._set(pod, EXITED if code == 0 else ERROR, detail)
        return True

    async def _stopping(self, pod: Pod) -> None:
        await self.runner.stop(pod.key)
        pod.pid = None
        if not (pod.spec.get("mounts") or {}):
            # The container disk is wiped at every stop; only volumes keep data.
            shutil.rmtree(self.pod_dir(pod.id) / "container", ignore_errors=True)
        self.save()

    async def _restarting(self, pod: Pod) -> None:
        await self.runner.stop(pod.key)
        pod.pid = None
        await self._boot(pod)

    async def _terminating(self, pod: Pod) -> None:
        await asyncio.gather(self.runner.stop(pod.key), self._pause(TERMINATED))
        pod.pid = None
        self.pods.pop(pod.id, None)
        shutil.rmtree(self.pod_dir(pod.id), ignore_errors=True)
        self.save()
