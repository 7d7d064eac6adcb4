"""Loaded models (``/api/ps``): loads, ``keep_alive`` timers and expiry, as Ollama's scheduler.

- The default keep-alive (``OLLAMA_KEEP_ALIVE``) applies only when a model is first loaded;
  a later request that sets ``keep_alive`` replaces it, one that omits it keeps it.
- The timer starts when the last request using the model ends; 0 unloads at that moment.
- A different ``options.num_ctx`` reloads the model.
- Expiry is evaluated lazily whenever the loaded set is read.
- A model is listed from the moment its load begins: Ollama puts the runner in its loaded
  set (``loading: true``) before waiting for it to run, and ``/api/ps`` lists every entry
  of that set, estimating ``expires_at`` while it loads (ollama/ollama ``server/sched.go``
  ``Scheduler.load`` and ``server/routes.go`` ``PsHandler``, at 09f15872d925).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ondemand.sandbox.ollama.durations import FOREVER_NS, rfc3339

if TYPE_CHECKING:
    from ondemand.sandbox.ollama.config import EmulatorConfig
    from ondemand.sandbox.ollama.stats import Stats
    from ondemand.sandbox.ollama.store import StoredModel
    from ondemand.sandbox.ollama.watch import Watch


@dataclass(slots=True)
class Loaded:
    model: StoredModel
    keep_alive_ns: int
    context_length: int
    on_cpu: bool
    refs: int = 0
    expires_ns: int = 0

    def expires_at_ns(self, now_ns: int) -> int:
        if self.refs > 0:
            return now_ns + self.keep_alive_ns
        return self.expires_ns

    def ps_entry(self, now_ns: int) -> dict[str, Any]:
        size = self.model.manifest.size
        return {
            "name": self.model.name,
            "model": self.model.name,
            "size": size,
            "digest": self.model.manifest.digest,
            "details": self.model.manifest.details,
            "expires_at": rfc3339(self.expires_at_ns(now_ns)),
            "size_vram": 0 if self.on_cpu else size,
            "context_length": self.context_length,
        }


class Residency:
    def __init__(self, config: EmulatorConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.loaded: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        # What /api/ps shows of a model while it loads (until ``loaded`` holds it).
        self._arriving: dict[str, Loaded] = {}

    def sweep(self) -> None:
        now = time.time_ns()
        for key, entry in list(self.loaded.items()):
            if entry.refs == 0 and entry.expires_ns <= now:
                self._drop(key, "expired")

    def _drop(self, key: str, reason: str) -> None:
        entry = self.loaded.pop(key, None)
        if entry is not None:
            self.stats.unloads += 1
            self.stats.event("unload", model=entry.model.name, reason=reason)

    def _loaded(self, key: str, _task: asyncio.Future[None]) -> None:
        self._loading.pop(key, None)
        self._arriving.pop(key, None)

    def get(self, key: str) -> Loaded | None:
        self.sweep()
        return self.loaded.get(key)

    def ps(self) -> list[dict[str, Any]]:
        """Longest time left first."""
        self.sweep()
        now = time.time_ns()
        arriving = [e for key, e in self._arriving.items() if key not in self.loaded]
        entries = sorted(
            [*self.loaded.values(), *arriving], key=lambda e: e.expires_at_ns(now), reverse=True
        )
        return [entry.ps_entry(now) for entry in entries]

    async def acquire(
        self,
        model: StoredModel,
        keep_alive_ns: int | None,
        num_ctx: int | None,
        watch: Watch,
    ) -> tuple[Loaded, int]:
        """Load ``model`` if needed and hold it for one request; returns it and the load time
        (ns) this request waited for."""
        started = time.perf_counter_ns()
        key = model.key
        entry = self.get(key)
        if entry is not None and num_ctx is not None and num_ctx != entry.context_length:
            self._drop(key, "reload")
            entry = None
        while entry is None:
            if self.config.load_time > 0:
                pending = self._loading.get(key)
                if pending is None:
                    pending = asyncio.ensure_future(asyncio.sleep(self.config.load_time))
                    self._loading[key] = pending
                    self._arriving[key] = self._entry(model, keep_alive_ns, num_ctx, refs=1)
                    pending.add_done_callback(functools.partial(self._loaded, key))
                await watch.wait(pending)
            entry = self.loaded.get(key)
            if entry is None:
                entry = self._entry(model, keep_alive_ns, num_ctx)
                self.loaded[key] = entry
                self.stats.loads += 1
                self.stats.event("load", model=model.name)
                keep_alive_ns = None
        if keep_alive_ns is not None:
            entry.keep_alive_ns = keep_alive_ns
        entry.refs += 1
        return entry, time.perf_counter_ns() - started

    def _entry(
        self, model: StoredModel, keep_alive_ns: int | None, num_ctx: int | None, refs: int = 0
    ) -> Loaded:
        return Loaded(
            model=model,
            keep_alive_ns=self.config.keep_alive_ns if keep_alive_ns is None else keep_alive_ns,
            context_length=num_ctx or self.config.context_length,
            on_cpu=self.config.runs_on_cpu(model.name),
            refs=refs,
        )

    def release(self, entry: Loaded) -> None:
        """One request is done with ``entry``; start its keep-alive timer if it was the last."""
        entry.refs = max(0, entry.refs - 1)
        if entry.refs or self.loaded.get(entry.model.key) is not entry:
            return
        if entry.keep_alive_ns <= 0:
            self._drop(entry.model.key, "keep_alive")
            return
        now = time.time_ns()
        entry.expires_ns = now + min(entry.keep_alive_ns, FOREVER_NS)

    def unload(self, key: str) -> None:
        """``keep_alive: 0`` with nothing to do: unload now, or when the last user finishes."""
        entry = self.loaded.get(key)
        if entry is None:
            return
        entry.keep_alive_ns = 0
        if entry.refs == 0:
            self._drop(key, "keep_alive")

    def clear(self) -> None:
        self.loaded.clear()
        self._arriving.clear()
