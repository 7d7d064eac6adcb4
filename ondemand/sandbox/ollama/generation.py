"""Paced token generation shared by ``/api/generate``, ``/api/chat`` and the ``/v1`` routes.

Tokens go out against absolute deadlines (start + ttft + i/rate) so the rate holds over long
streams; every token is its own body message. The handlers decide the wire format through a
``render`` callback that returns the bytes of one line or SSE event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ondemand.sandbox.ollama.gojson import RequestError
from ondemand.sandbox.ollama.text import THOUGHTS, reply_tokens

if TYPE_CHECKING:
    from ondemand.sandbox.ollama.config import Fault
    from ondemand.sandbox.ollama.state import Call, State
    from ondemand.sandbox.ollama.store import StoredModel
    from ondemand.sandbox.ollama.watch import Watch

Render = Callable[[str, bool], bytes]
"""``render(token, is_thinking)`` → the bytes of one streamed line."""


@dataclass(slots=True)
class Plan:
    model: StoredModel
    name: str
    """The model name as the client sent it; responses echo it."""
    prompt_count: int
    keep_alive_ns: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    think: bool = False


@dataclass(slots=True)
class Outcome:
    thinking: list[str]
    reply: list[str]
    done_reason: str
    prompt_count: int
    load_ns: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    total_ns: int = 0
    cut: str | None = None
    """``close`` or ``error`` when a fault ended the stream early."""

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.reply)

    def metrics(self) -> dict[str, int]:
        values = {
            "total_duration": self.total_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_count,
            "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_ns,
        }
        # Ollama's Metrics fields are omitempty.
        return {k: v for k, v in values.items() if v}


def resolve_think(value: object, model: StoredModel, name: str) -> bool:
    """Missing ``think`` means on for thinking models; asking a plain model is a 400."""
    if value is None:
        return model.spec.thinking
    wanted = value is not False
    if wanted and not model.spec.thinking:
        raise RequestError(400, f"{quote(name)} does not support thinking")
    return wanted


def quote(name: str) -> str:
    """Go's ``%q`` for a model name."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_option(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def plan_tokens(plan: Plan, response_tokens: int) -> tuple[list[str], list[str], str]:
    thinking = list(THOUGHTS) if plan.think else []
    reply = reply_tokens(response_tokens)
    reason = "stop"
    stops = plan.options.get("stop")
    if isinstance(stops, list) and stops:
        text = ""
        for i, token in enumerate(reply):
            text += token
            hit = min((text.find(s) for s in stops if s and s in text), default=-1)
            if hit >= 0:
                kept = text[:hit]
                reply = reply[:i]
                consumed = "".join(reply)
                if len(kept) > len(consumed):
                    reply.append(kept[len(consumed) :])
                break
    limit = _int_option(plan.options, "num_predict")
    if limit is not None and limit > 0 and len(thinking) + len(reply) > limit:
        thinking = thinking[:limit]
        reply = reply[: limit - len(thinking)]
        reason = "length"
    return thinking, reply, reason


def due(fault: Fault | None, sent: int) -> str | None:
    if fault is None:
        return None
    if fault.close_after_lines is not None and sent >= fault.close_after_lines:
        return "close"
    if fault.error_after_lines is not None and sent >= fault.error_after_lines:
        return "error"
    return None


async def run(
    state: State,
    call: Call,
    watch: Watch,
    plan: Plan,
    render: Render | None,
    start: Callable[[], Awaitable[None]] | None = None,
) -> Outcome:
    """Load, wait the time to first token, then produce every token.

    With ``render`` each token is sent as a line; ``start`` (awaitable factory) is called once
    right before the first line, so headers leave only when the model has answered, as with
    Ollama. Raises ``Disconnected`` when the client goes away.
    """
    began = time.perf_counter_ns()
    config = state.config
    num_ctx = _int_option(plan.options, "num_ctx")
    entry, load_ns = await state.residency.acquire(plan.model, plan.keep_alive_ns, num_ctx, watch)
    try:
        watch.phase = "generate"
        thinking, reply, reason = plan_tokens(plan, config.response_tokens)
        outcome = Outcome(thinking, reply, reason, plan.prompt_count, load_ns=max(load_ns, 1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ttft = max(0.0, config.ttft)
        rate = config.tokens_per_second
        step = 1.0 / rate if rate > 0 else 0.0
        first_ns = 0
        stats = state.stats
        tokens = [(t, True) for t in thinking] + [(t, False) for t in reply]
        for i, (token, is_thought) in enumerate(tokens):
            await watch.sleep_until(t0 + ttft + i * step)
            if i == 0:
                first_ns = time.perf_counter_ns()
            if render is not None:
                cut = due(call.fault, watch.sent)
                if cut is not None:
                    outcome.cut = cut
                    return outcome
                if watch.sent == 0 and start is not None:
                    await start()
                await watch.line(render(token, is_thought))
            watch.sent += 1
            stats.tokens += 1
        if not tokens:
            await watch.sleep_until(t0 + ttft)
            first_ns = time.perf_counter_ns()
        outcome.cut = due(call.fault, watch.sent)
        done_ns = time.perf_counter_ns()
        outcome.prompt_eval_ns = max(first_ns - began - load_ns, 1)
        outcome.eval_ns = max(done_ns - first_ns, 1)
        outcome.total_ns = done_ns - began
        return outcome
    finally:
        state.residency.release(entry)
