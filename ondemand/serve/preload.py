"""Preload and warm: pull what the cache lacks, load every model into memory, check where.

Each model runs its own pipeline (present? -> pull -> load), so three models that take
2 s to pull and 1 s to load are ready in about 3 s, not 9. Pulls share a bound because
they compete for the same network and disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from ondemand.modelnames import canonical
from ondemand.serve.models import ModelState, Phase

log = logging.getLogger("ondemand.serve")

# Pull errors that another try cannot fix: the name does not exist in the registry.
_PERMANENT = ("file does not exist", "not found", "invalid model name", "unauthorized")
_PROGRESS_EVERY = 5.0  # seconds between progress lines per model


class PreloadFailed(Exception):
    """A model could not be made ready; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class WarmPolicy:
    keep_alive: str | int = -1
    require_gpu: bool = False
    expected_gpu: str | None = None
    pull_concurrency: int = 3
    pull_retries: int = 3
    retry_delay: float = 1.0


def _size(value: object) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "?"
    gb = value / 1e9
    return f"{gb:.1f} GB" if gb >= 1 else f"{value / 1e6:.0f} MB"


class Preloader:
    """One preload run against one running Ollama."""

    def __init__(self, base_url: str, models: Sequence[ModelState], policy: WarmPolicy) -> None:
        self.base_url = base_url
        self.models = list(models)
        self.policy = policy
        self._pulls = asyncio.Semaphore(max(1, policy.pull_concurrency))

    async def run(self) -> list[str]:
        """Run every model's pipeline; return the problems (empty when all are warm)."""
        # Loads can hold the answer back for minutes: no read timeout, but a bounded connect.
        timeout = httpx.Timeout(None, connect=10.0)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout) as client:
            present = await self._present(client)
            results = await asyncio.gather(
                *(self._pipeline(client, model, present) for model in self.models),
                return_exceptions=True,
            )
            problems = []
            for model, result in zip(self.models, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, PreloadFailed | httpx.HTTPError):
                        raise result
                    model.phase, model.error = Phase.FAILED, model.error or str(result)
                    problems.append(f"{model.name}: {model.error}")
            loaded = [m for m in self.models if m.phase is Phase.LOADING]
            if loaded:
                problems += await self._check_residency(client, loaded)
            return problems

    async def _present(self, client: httpx.AsyncClient) -> set[str]:
        response = await client.get("/api/tags")
        response.raise_for_status()
        return {canonical(m.get("model") or m["name"]) for m in response.json().get("models", [])}

    async def _pipeline(
        self, client: httpx.AsyncClient, model: ModelState, present: set[str]
    ) -> None:
        model.cached = model.key in present
        if not model.cached:
            async with self._pulls:
                await self._pull_with_retries(client, model)
        else:
            log.info("%s is in the model cache: not pulled", model.name)
        await self._load(client, model)

    async def _pull_with_retries(self, client: httpx.AsyncClient, model: ModelState) -> None:
        attempts = max(1, self.policy.pull_retries)
        for attempt in range(1, attempts + 1):
            try:
                await self._pull(client, model)
                return
            except (PreloadFailed, httpx.TransportError) as exc:
                message = str(exc) or type(exc).__name__
                permanent = any(p in message.lower() for p in _PERMANENT)
                if permanent or attempt == attempts:
                    model.error = f"pull failed: {message}"
                    raise PreloadFailed(model.error) from exc
                delay = self.policy.retry_delay * 2 ** (attempt - 1)
                log.warning(
                    "pulling %s failed (%s); try %d of %d in %.0fs",
                    model.name, message, attempt + 1, attempts, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _pull(self, client: httpx.AsyncClient, model: ModelState) -> None:
        model.phase, model.progress = Phase.PULLING, 0.0
        started = time.monotonic()
        last_log = 0.0
        log.info("pulling %s", model.name)
        done = False
        body = {"model": model.name, "stream": True}
        async with client.stream("POST", "/api/pull", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise PreloadFailed(_error_text(response.text) or f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue  # never let an odd line break a pull
                if not isinstance(item, dict):
                    continue
                if "error" in item:
                    raise PreloadFailed(str(item["error"]))
                total, completed = item.get("total"), item.get("completed")
                if isinstance(total, int) and total > 0 and isinstance(completed, int):
                    model.progress = min(1.0, completed / total)
                    now = time.monotonic()
                    if now - last_log >= _PROGRESS_EVERY:
                        last_log = now
                        log.info(
                            "pulling %s: %d%% of %s",
                            model.name, round(model.progress * 100), _size(total),
                        )  # fmt: skip
                if item.get("status") == "success":
                    done = True
        if not done:
            raise PreloadFailed("the pull ended before Ollama reported success")
        model.progress = 1.0
        model.seconds["pull"] = time.monotonic() - started
        log.info("pulled %s in %.1fs", model.name, model.seconds["pull"])

    async def _kind(self, client: httpx.AsyncClient, model: ModelState) -> str:
        response = await client.post("/api/show", json={"model": model.name})
        if response.status_code != 200:
            raise PreloadFailed(_error_text(response.text) or f"HTTP {response.status_code}")
        capabilities = response.json().get("capabilities") or []
        if "embedding" in capabilities and "completion" not in capabilities:
            return "embedding"
        return "text"

    async def _load(self, client: httpx.AsyncClient, model: ModelState) -> None:
        model.phase = Phase.LOADING
        started = time.monotonic()
        try:
            model.kind = await self._kind(client, model)
        except PreloadFailed as exc:
            model.error = f"not in the model store after the pull: {exc}"
            raise
        keep_alive = self.policy.keep_alive
        if model.kind == "embedding":
            # Embedding models answer 400 to generate; an empty embed loads them.
            request = client.post(
                "/api/embed", json={"model": model.name, "keep_alive": keep_alive}
            )
        else:
            body = {"model": model.name, "keep_alive": keep_alive, "stream": False}
            request = client.post("/api/generate", json=body)
        response = await request
        if response.status_code != 200:
            model.error = f"load failed: {_error_text(response.text) or response.status_code}"
            raise PreloadFailed(model.error)
        model.seconds["load"] = time.monotonic() - started
        log.info("loaded %s (%s) in %.1fs", model.name, model.kind, model.seconds["load"])

    async def _check_residency(
        self, client: httpx.AsyncClient, models: list[ModelState]
    ) -> list[str]:
        """Every loaded model must still be in memory; with require_gpu, in VRAM."""
        response = await client.get("/api/ps")
        response.raise_for_status()
        loaded = {canonical(m.get("model") or m["name"]): m for m in response.json()["models"]}
        problems: list[str] = []
        for model in models:
            entry = loaded.get(model.key)
            if entry is None:
                model.phase = Phase.FAILED
                model.error = (
                    "not in memory after loading (evicted? raise OLLAMA_MAX_LOADED_MODELS "
                    "or use a GPU with more memory)"
                )
                problems.append(f"{model.name}: {model.error}")
                continue
            model.size, model.size_vram = int(entry.get("size", 0)), int(entry.get("size_vram", 0))
            if model.on_gpu:
                model.phase = Phase.WARM
                continue
            where = (
                f"{_size(model.size_vram)} of {_size(model.size)} in GPU memory"
                if model.size_vram
                else "entirely on the CPU"
            )
            expected = self.policy.expected_gpu or "a GPU"
            if self.policy.require_gpu:
                model.phase = Phase.FAILED
                model.error = (
                    f"loaded {where}, but ONDEMAND_REQUIRE_GPU=1 expects {expected}: Ollama "
                    "found no usable GPU (check the GPU type, drivers and Ollama's "
                    "'inference compute' log line)"
                )
                problems.append(f"{model.name}: {model.error}")
            else:
                model.phase = Phase.WARM
                log.warning("%s is loaded %s; expected %s", model.name, where, expected)
        return problems


def _error_text(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else body.strip()[:300]
