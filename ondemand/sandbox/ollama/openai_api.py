"""OpenAI-compatible ``/v1`` routes, shaped like Ollama's middleware output (v0.32.6+ chunks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ondemand.sandbox.ollama import embed as native_embed
from ondemand.sandbox.ollama import generation
from ondemand.sandbox.ollama.generation import Plan, quote, resolve_think
from ondemand.sandbox.ollama.gojson import RequestError, decode
from ondemand.sandbox.ollama.names import parse_name
from ondemand.sandbox.ollama.native import find_for_inference
from ondemand.sandbox.ollama.text import json_fragment, prompt_tokens, to_base64
from ondemand.sandbox.ollama.watch import Disconnected, Watch
from ondemand.sandbox.ollama.wire import (
    SSE_TYPE,
    Stream,
    dumps,
    finish_json,
    openai_error,
    send_json,
)

if TYPE_CHECKING:
    from ondemand.sandbox.ollama.residency import Loaded
    from ondemand.sandbox.ollama.state import Call, State

_ANY = "any"
_SAMPLING = {"max_tokens", "seed", "stop", "temperature", "top_p", "frequency_penalty"}
_SAMPLING |= {"presence_penalty", "stream_options", "logprobs"}
_CHAT_ONLY = {"messages", "max_completion_tokens", "response_format", "tools", "top_logprobs"}
_CHAT_ONLY |= {"reasoning_effort", "reasoning"}
CHAT_FIELDS = dict.fromkeys(_SAMPLING | _CHAT_ONLY, _ANY) | {"model": "string", "stream": "bool"}
COMPLETION_FIELDS = dict.fromkeys(_SAMPLING | {"suffix"}, _ANY)
COMPLETION_FIELDS |= {"model": "string", "prompt": "string", "stream": "bool"}
EMBEDDING_FIELDS = {"model": "string", "input": _ANY, "encoding_format": "string"}
EMBEDDING_FIELDS["dimensions"] = "int"


def _decode(call: Call, struct: str, fields: dict[str, str]) -> dict[str, Any]:
    # The middleware binds the body itself, so an empty body is Go's bare io.EOF text.
    if not call.body.strip():
        raise RequestError(400, "EOF")
    return decode(call.body, struct, fields)


def _options(req: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    limit = req.get("max_completion_tokens", req.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool):
        options["num_predict"] = limit
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    return options


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _usage(outcome: generation.Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_count,
        "completion_tokens": outcome.eval_count,
        "total_tokens": outcome.prompt_count + outcome.eval_count,
    }


def _include_usage(req: dict[str, Any]) -> bool:
    options = req.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def chat_completions(state: State, call: Call) -> None:
    req = _decode(call, "ChatCompletionRequest", CHAT_FIELDS)
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "[] is too short - 'messages'")
    name: str = req.get("model") or ""
    if not name or not parse_name(name).valid:
        raise RequestError(400, "model is required")
    model = find_for_inference(state, name)
    if model.spec.kind == "embedding":
        raise RequestError(400, f"{quote(name)} does not support chat")
    reasoning = req.get("reasoning")
    effort = req.get("reasoning_effort")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    think_value: object = None if effort is None else effort != "none"
    think = resolve_think(think_value, model, name)
    texts = [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    plan = Plan(model, name, prompt_tokens(texts, 4), None, _options(req), think)
    ident = f"chatcmpl-{state.next_id()}"
    created = int(time.time())
    head = b'{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,' % (
        ident.encode(),
        created,
        dumps(name),
    )
    head += b'"system_fingerprint":"fp_ollama","choices":'
    first = True

    def render(token: str, thought: bool) -> bytes:
        nonlocal first
        role = b'"role":"assistant",' if first else b""
        first = False
        if thought:
            delta = b'%s"content":"","reasoning":"%s"' % (role, json_fragment(token))
        else:
            delta = b'%s"content":"%s"' % (role, json_fragment(token))
        return b'data: %s[{"index":0,"delta":{%s},"finish_reason":null}]}\n\n' % (head, delta)

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **extra,
        }
        return b"data: " + dumps(body) + b"\n\n"

    def closing(outcome: generation.Outcome) -> list[bytes]:
        events = [chunk([{"index": 0, "delta": {}, "finish_reason": outcome.done_reason}])]
        if _include_usage(req):
            events.append(chunk([], usage=_usage(outcome)))
        return events

    def whole(outcome: generation.Outcome) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(outcome.reply)}
        if outcome.thinking:
            message["reasoning"] = "".join(outcome.thinking)
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": message, "finish_reason": outcome.done_reason}],
            "usage": _usage(outcome),
        }

    await _respond(state, call, plan, req.get("stream") is True, render, closing, whole)


async def completions(state: State, call: Call) -> None:
    req = _decode(call, "CompletionRequest", COMPLETION_FIELDS)
    name: str = req.get("model") or ""
    model = find_for_inference(state, name)
    if model.spec.kind == "embedding":
        raise RequestError(400, f"{quote(name)} does not support generate")
    prompt: str = req.get("prompt") or ""
    plan = Plan(model, name, prompt_tokens([prompt], 10), None, _options(req), False)
    ident = f"cmpl-{state.next_id()}"
    created = int(time.time())

    def body(choices: list[Any], **extra: Any) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **extra,
        }

    head, _, tail = dumps(body([{"text": "\0", "index": 0, "finish_reason": None}])).partition(
        b"\\u0000"
    )

    def render(token: str, _thought: bool) -> bytes:
        return b"data: %s%s%s\n\n" % (head, json_fragment(token), tail)

    def closing(outcome: generation.Outcome) -> list[bytes]:
        final = body([{"text": "", "index": 0, "finish_reason": outcome.done_reason}])
        events = [b"data: " + dumps(final) + b"\n\n"]
        if _include_usage(req):
            events.append(b"data: " + dumps(body([], usage=_usage(outcome))) + b"\n\n")
        return events

    def whole(outcome: generation.Outcome) -> dict[str, Any]:
        text = "".join(outcome.reply)
        choice = {"text": text, "index": 0, "finish_reason": outcome.done_reason}
        return body([choice], usage=_usage(outcome))

    await _respond(state, call, plan, req.get("stream") is True, render, closing, whole)


async def _respond(
    state: State,
    call: Call,
    plan: Plan,
    stream: bool,
    render: generation.Render,
    closing: Callable[[generation.Outcome], list[bytes]],
    whole: Callable[[generation.Outcome], dict[str, Any]],
) -> None:
    watch = Watch(call.receive, call.send, state.stats, call.path, plan.name)
    completed = False
    try:
        if not stream:
            outcome = await generation.run(state, call, watch, plan, None)
            await finish_json(watch, call.fault, whole(outcome), openai=True)
            completed = True
            return
        out = Stream(watch, SSE_TYPE)
        outcome = await generation.run(state, call, watch, plan, render, out.start)
        if outcome.cut == "close":
            await out.cut()
        elif outcome.cut == "error" and call.fault is not None:
            error = openai_error(call.fault.status, call.fault.message)
            await out.end(b"data: " + dumps(error) + b"\n\n")
        else:
            for event in closing(outcome):
                await out.line(event)
            await out.end(b"data: [DONE]\n\n")
            completed = True
    except Disconnected:
        pass
    finally:
        await watch.close(completed=completed)


async def embeddings(state: State, call: Call) -> None:
    req = _decode(call, "EmbedRequest", EMBEDDING_FIELDS)
    raw = req.get("input")
    if raw == "":
        raw = [""]
    if raw is None or raw == []:
        raise RequestError(400, "invalid input")
    texts = native_embed.inputs_of(raw)
    encoding = req.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(400, f"invalid encoding format: {quote(encoding)}")
    name: str = req.get("model") or ""
    model = native_embed.find_for_embedding(state, name)
    dimensions = req.get("dimensions")

    def work(entry: Loaded) -> dict[str, Any]:
        found, tokens = native_embed.vectors(state, entry, texts, True, dimensions)
        data = [
            {
                "object": "embedding",
                "embedding": to_base64(v) if encoding == "base64" else v,
                "index": i,
            }
            for i, v in enumerate(found)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": name, "usage": usage}

    await native_embed.compute(state, call, model, name, None, {}, work, openai=True)


def _model_entry(name: str, created: float) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(created),
        "owned_by": parse_name(name).namespace,
    }


async def list_models(state: State, call: Call) -> None:
    found = [_model_entry(m.name, m.modified_at) for m in state.store.models()]
    # Ollama builds this from a nil slice: no models is null, not [].
    await send_json(call.send, 200, {"object": "list", "data": found or None})


async def retrieve_model(state: State, call: Call) -> None:
    name = call.params["model"]
    model = state.store.find(name) if parse_name(name).valid else None
    if model is None:
        raise RequestError(404, f"model '{parse_name(name).display}' not found")
    await send_json(call.send, 200, _model_entry(name, model.modified_at) | {"id": name})
