"""``POST /api/generate`` and ``POST /api/chat``: NDJSON streams or one JSON object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ondemand.sandbox.ollama import generation
from ondemand.sandbox.ollama.generation import Plan, quote, resolve_think
from ondemand.sandbox.ollama.gojson import RequestError, check_options, decode, num_ctx_of
from ondemand.sandbox.ollama.names import parse_name
from ondemand.sandbox.ollama.text import context_ids, json_fragment, prompt_tokens
from ondemand.sandbox.ollama.watch import Disconnected, Watch
from ondemand.sandbox.ollama.wire import NDJSON_TYPE, Stream, dumps, finish_json, send_json

if TYPE_CHECKING:
    from ondemand.sandbox.ollama.state import Call, State
    from ondemand.sandbox.ollama.store import StoredModel

_COMMON = {
    "model": "string",
    "stream": "bool",
    "format": "any",
    "keep_alive": "duration",
    "options": "map",
    "think": "think",
    "truncate": "bool",
    "shift": "bool",
    "logprobs": "bool",
    "top_logprobs": "int",
}
GENERATE_FIELDS = {
    **_COMMON,
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "[]int",
    "raw": "bool",
    "images": "[]string",
}
CHAT_FIELDS = {**_COMMON, "messages": "messages", "tools": "any"}


def _check_logprobs(req: dict[str, Any]) -> None:
    top = req.get("top_logprobs")
    if isinstance(top, int) and not 0 <= top <= 20:
        raise RequestError(400, "top_logprobs must be between 0 and 20")


def find_for_inference(state: State, name: str) -> StoredModel:
    """generate/chat lookups: a bad or unknown name is a 404 echoing the name as sent."""
    stored = state.store.find(name) if parse_name(name).valid else None
    if stored is None:
        raise RequestError(404, f"model '{name}' not found")
    return stored


async def generate(state: State, call: Call) -> None:
    req = decode(call.body, "GenerateRequest", GENERATE_FIELDS)
    name: str = req.get("model") or ""
    stored = find_for_inference(state, name)
    _check_logprobs(req)
    prompt: str = req.get("prompt") or ""
    keep_alive: int | None = req.get("keep_alive")
    if not prompt and keep_alive == 0:
        state.residency.unload(stored.key)
        await send_json(call.send, 200, _done_generate(state, name, "unload"))
        return
    if req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
        raise RequestError(400, "raw mode does not support template, system, or context")
    if stored.spec.kind == "embedding":
        raise RequestError(400, f"{quote(name)} does not support generate")
    think = resolve_think(req.get("think"), stored, name)
    options = check_options(req.get("options"))
    text = (req.get("system") or "") + prompt
    plan = Plan(stored, name, prompt_tokens([text], 10), keep_alive, options, think)
    stream = req.get("stream") is not False
    if not prompt:
        await _load_only(state, call, plan, _done_generate(state, name, "load"))
        return

    prefix = b'{"model":' + dumps(name) + b',"created_at":"'
    clock = state.clock

    def render(token: str, thought: bool) -> bytes:
        stamp = clock.now().encode()
        if thought:
            return b'%s%s","response":"","thinking":"%s","done":false}\n' % (
                prefix,
                stamp,
                json_fragment(token),
            )
        return b'%s%s","response":"%s","done":false}\n' % (prefix, stamp, json_fragment(token))

    def final(outcome: generation.Outcome, streamed: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": name, "created_at": clock.now()}
        body["response"] = "" if streamed else "".join(outcome.reply)
        if outcome.thinking and not streamed:
            body["thinking"] = "".join(outcome.thinking)
        body["done"] = True
        body["done_reason"] = outcome.done_reason
        if not req.get("raw"):
            body["context"] = context_ids(text, outcome.prompt_count + outcome.eval_count)
        body.update(outcome.metrics())
        return body

    await _respond(state, call, plan, stream, render, final)


async def chat(state: State, call: Call) -> None:
    req = decode(call.body, "ChatRequest", CHAT_FIELDS)
    name: str = req.get("model") or ""
    if not name or not parse_name(name).valid:
        raise RequestError(400, "model is required")
    stored = find_for_inference(state, name)
    _check_logprobs(req)
    messages = [m for m in req.get("messages") or [] if isinstance(m, dict)]
    keep_alive: int | None = req.get("keep_alive")
    if not messages and keep_alive == 0:
        state.residency.unload(stored.key)
        await send_json(call.send, 200, _done_chat(state, name, "unload"))
        return
    if stored.spec.kind == "embedding":
        raise RequestError(400, f"{quote(name)} does not support chat")
    think = resolve_think(req.get("think"), stored, name)
    options = check_options(req.get("options"))
    texts = [str(m.get("content") or "") for m in messages]
    plan = Plan(stored, name, prompt_tokens(texts, 4), keep_alive, options, think)
    if not messages:
        await _load_only(state, call, plan, _done_chat(state, name, "load"))
        return
    await chat_reply(state, call, plan, req.get("stream") is not False)


async def chat_reply(state: State, call: Call, plan: Plan, stream: bool) -> None:
    prefix = b'{"model":' + dumps(plan.name) + b',"created_at":"'
    clock = state.clock

    def render(token: str, thought: bool) -> bytes:
        stamp = clock.now().encode()
        if thought:
            return (
                b'%s%s","message":{"role":"assistant","content":"","thinking":"%s"},"done":false}\n'
                % (prefix, stamp, json_fragment(token))
            )
        return b'%s%s","message":{"role":"assistant","content":"%s"},"done":false}\n' % (
            prefix,
            stamp,
            json_fragment(token),
        )

    def final(outcome: generation.Outcome, streamed: bool) -> dict[str, Any]:
        message = {"role": "assistant", "content": "" if streamed else "".join(outcome.reply)}
        if outcome.thinking and not streamed:
            message["thinking"] = "".join(outcome.thinking)
        body: dict[str, Any] = {"model": plan.name, "created_at": clock.now(), "message": message}
        body |= {"done_reason": outcome.done_reason, "done": True}
        return body | outcome.metrics()

    await _respond(state, call, plan, stream, render, final)


def _done_generate(state: State, name: str, reason: str) -> dict[str, Any]:
    return {
        "model": name,
        "created_at": state.clock.now(),
        "response": "",
        "done": True,
        "done_reason": reason,
    }


def _done_chat(state: State, name: str, reason: str) -> dict[str, Any]:
    return {
        "model": name,
        "created_at": state.clock.now(),
        "message": {"role": "assistant", "content": ""},
        "done_reason": reason,
        "done": True,
    }


async def _load_only(state: State, call: Call, plan: Plan, body: dict[str, Any]) -> None:
    watch = Watch(call.receive, call.send, state.stats, call.path, plan.name)
    completed = False
    try:
        entry, _ = await state.residency.acquire(
            plan.model, plan.keep_alive_ns, num_ctx_of(plan.options), watch
        )
        state.residency.release(entry)
        body["created_at"] = state.clock.now()
        watch.finishing()
        await send_json(watch.send, 200, body)
        completed = True
    except Disconnected:
        pass
    finally:
        await watch.close(completed=completed)


async def _respond(
    state: State,
    call: Call,
    plan: Plan,
    stream: bool,
    render: generation.Render,
    final: Any,
) -> None:
    watch = Watch(call.receive, call.send, state.stats, call.path, plan.name)
    completed = False
    try:
        if stream:
            out = Stream(watch, NDJSON_TYPE)
            outcome = await generation.run(state, call, watch, plan, render, out.start)
            if outcome.cut == "close":
                await out.cut()
                return
            if outcome.cut == "error" and call.fault is not None:
                await out.end(dumps({"error": call.fault.message}) + b"\n")
                return
            await out.end(dumps(final(outcome, True)) + b"\n")
        else:
            outcome = await generation.run(state, call, watch, plan, None)
            await finish_json(watch, call.fault, final(outcome, False))
        completed = True
    except Disconnected:
        pass
    finally:
        await watch.close(completed=completed)
