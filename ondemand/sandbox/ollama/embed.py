"""``POST /api/embed`` (batch, normalised) and ``POST /api/embeddings`` (legacy, raw)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ondemand.sandbox.ollama.gojson import RequestError, check_options, decode, num_ctx_of
from ondemand.sandbox.ollama.names import parse_name
from ondemand.sandbox.ollama.text import count_tokens, embedding, legacy_embedding
from ondemand.sandbox.ollama.watch import Disconnected, Watch
from ondemand.sandbox.ollama.wire import finish_json

if TYPE_CHECKING:
    from ondemand.sandbox.ollama.residency import Loaded
    from ondemand.sandbox.ollama.state import Call, State
    from ondemand.sandbox.ollama.store import StoredModel

EMBED_FIELDS = {
    "model": "string",
    "input": "any",
    "truncate": "bool",
    "dimensions": "int",
    "keep_alive": "duration",
    "options": "map",
}
EMBEDDINGS_FIELDS = {
    "model": "string",
    "prompt": "string",
    "keep_alive": "duration",
    "options": "map",
}


def inputs_of(value: object) -> list[str]:
    """``input`` is a string or a list of strings; an empty string means no input."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RequestError(400, "invalid input type")


def find_for_embedding(state: State, name: str) -> StoredModel:
    stored = state.store.find(name) if parse_name(name).valid else None
    if stored is None:
        raise RequestError(404, f'model "{name}" not found, try pulling it first')
    return stored


async def compute(
    state: State,
    call: Call,
    model: StoredModel,
    name: str,
    keep_alive: int | None,
    options: dict[str, Any],
    work: Callable[[Loaded], dict[str, Any]],
    *,
    openai: bool = False,
) -> None:
    """Load the model, spend the configured TTFT "computing", then answer ``work(entry)``."""
    watch = Watch(call.receive, call.send, state.stats, call.path, name)
    completed = False
    ctx = num_ctx_of(options)
    try:
        entry, _ = await state.residency.acquire(model, keep_alive, ctx, watch)
        try:
            watch.phase = "generate"
            await watch.sleep(state.config.ttft)
            payload = work(entry)
        finally:
            state.residency.release(entry)
        await finish_json(watch, call.fault, payload, openai=openai)
        completed = True
    except Disconnected:
        pass
    finally:
        await watch.close(completed=completed)


def vectors(
    state: State, entry: Loaded, texts: list[str], truncate: bool, dimensions: int | None
) -> tuple[list[list[float]], int]:
    """Embeddings for ``texts`` and the prompt token count, with Ollama's length check."""
    tokens = 0
    out = []
    for text in texts:
        count = count_tokens(text)
        if count > entry.context_length:
            if not truncate:
                raise RequestError(400, "the input length exceeds the context length")
            count = entry.context_length
        tokens += count
        out.append(embedding(text, state.config.embedding_dimensions, dimensions))
    return out, tokens


async def embed(state: State, call: Call) -> None:
    req = decode(call.body, "EmbedRequest", EMBED_FIELDS)
    texts = inputs_of(req.get("input"))
    name: str = req.get("model") or ""
    model = find_for_embedding(state, name)
    options = check_options(req.get("options"))
    dimensions = req.get("dimensions")
    if isinstance(dimensions, int) and dimensions < 0:
        raise RequestError(400, "dimensions must be a positive integer")
    began = time.perf_counter_ns()

    def work(entry: Loaded) -> dict[str, Any]:
        if not texts:
            return {"model": name, "embeddings": []}
        found, tokens = vectors(state, entry, texts, req.get("truncate") is not False, dimensions)
        total = time.perf_counter_ns() - began
        return {
            "model": name,
            "embeddings": found,
            "total_duration": total,
            "load_duration": max(1, total // 10),
            "prompt_eval_count": tokens,
        }

    await compute(state, call, model, name, req.get("keep_alive"), options, work)


async def embeddings(state: State, call: Call) -> None:
    req = decode(call.body, "EmbeddingRequest", EMBEDDINGS_FIELDS)
    name: str = req.get("model") or ""
    model = find_for_embedding(state, name)
    options = check_options(req.get("options"))
    prompt: str = req.get("prompt") or ""

    def work(_entry: Loaded) -> dict[str, Any]:
        if not prompt:
            return {"embedding": []}
        return {"embedding": legacy_embedding(prompt, state.config.embedding_dimensions)}

    await compute(state, call, model, name, req.get("keep_alive"), options, work)
