"""Token metering over the exact bytes the Ollama emulator sends, however they are chunked."""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest

from ondemand.proxy.metering import Meter
from ondemand.sandbox.ollama import EmulatorConfig, Fault, ModelSpec, create_app
from ondemand.serving import BackgroundServer

Family = Literal["native", "openai"]
NDJSON = b"application/x-ndjson"
SSE = b"text/event-stream"
JSON = b"application/json; charset=utf-8"
MiB = 1 << 20

CHAT = [{"role": "user", "content": "How are tokens counted by a proxy?"}]
USAGE = {"stream_options": {"include_usage": True}}
LLAMA = "llama3.2"
THINKER = "qwen3"
EMBEDDER = "nomic-embed-text"

REQUESTS: dict[str, tuple[Family, str, dict[str, Any]]] = {
    "chat-stream": ("native", "/api/chat", {"model": LLAMA, "messages": CHAT}),
    "chat-whole": ("native", "/api/chat", {"model": LLAMA, "messages": CHAT, "stream": False}),
    "chat-think-stream": ("native", "/api/chat", {"model": THINKER, "messages": CHAT}),
    "generate-stream": ("native", "/api/generate", {"model": LLAMA, "prompt": "Say hi."}),
    "generate-whole": (
        "native",
        "/api/generate",
        {"model": LLAMA, "prompt": "Say hi.", "stream": False},
    ),
    "generate-load-only": ("native", "/api/generate", {"model": LLAMA}),
    "embed": ("native", "/api/embed", {"model": EMBEDDER, "input": ["one", "two words"]}),
    "embed-empty": ("native", "/api/embed", {"model": EMBEDDER, "input": []}),
    "v1-chat-stream": (
        "openai",
        "/v1/chat/completions",
        {"model": LLAMA, "messages": CHAT, "stream": True},
    ),
    "v1-chat-usage": (
        "openai",
        "/v1/chat/completions",
        {"model": LLAMA, "messages": CHAT, "stream": True, **USAGE},
    ),
    "v1-chat-think-usage": (
        "openai",
        "/v1/chat/completions",
        {"model": THINKER, "messages": CHAT, "stream": True, **USAGE},
    ),
    "v1-chat-whole": ("openai", "/v1/chat/completions", {"model": LLAMA, "messages": CHAT}),
    "v1-completions-stream": (
        "openai",
        "/v1/completions",
        {"model": LLAMA, "prompt": "Once upon", "stream": True},
    ),
    "v1-completions-usage": (
        "openai",
        "/v1/completions",
        {"model": LLAMA, "prompt": "Once upon", "stream": True, **USAGE},
    ),
    "v1-completions-whole": ("openai", "/v1/completions", {"model": LLAMA, "prompt": "Once"}),
    "v1-embeddings": ("openai", "/v1/embeddings", {"model": EMBEDDER, "input": ["a", "bcde"]}),
}
FAULTED: dict[str, tuple[Family, str, dict[str, Any], Fault | None]] = {
    "chat-error": (
        "native",
        "/api/chat",
        {"model": LLAMA, "messages": CHAT},
        Fault(path="/api/chat", error_after_lines=2, error="runner crashed"),
    ),
    "v1-chat-error": (
        "openai",
        "/v1/chat/completions",
        {"model": LLAMA, "messages": CHAT, "stream": True, **USAGE},
        Fault(path="/v1/chat/completions", error_after_lines=2, error="runner crashed"),
    ),
    "chat-cut": (
        "native",
        "/api/chat",
        {"model": LLAMA, "messages": CHAT},
        Fault(path="/api/chat", close_after_lines=3),
    ),
    "v1-chat-cut": (
        "openai",
        "/v1/chat/completions",
        {"model": LLAMA, "messages": CHAT, "stream": True, **USAGE},
        Fault(path="/v1/chat/completions", close_after_lines=3),
    ),
    "missing-model": (
        "native",
        "/api/chat",
        {"model": "absent", "messages": CHAT},
        None,
    ),
}
STREAMED = [
    "chat-stream",
    "chat-think-stream",
    "generate-stream",
    "v1-chat-stream",
    "v1-chat-usage",
    "v1-chat-think-usage",
    "v1-completions-stream",
    "v1-completions-usage",
    "chat-error",
    "v1-chat-error",
]


@dataclass(frozen=True)
class Capture:
    family: Family
    content_type: bytes
    chunks: tuple[bytes, ...]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def _capture(client: httpx.Client, family: Family, path: str, body: dict[str, Any]) -> Capture:
    chunks: list[bytes] = []
    with client.stream("POST", path, json=body) as response:
        content_type = response.headers.get("content-type", "").encode()
        # A fault may drop the connection mid-body; what arrived before it is the capture.
        with contextlib.suppress(httpx.RemoteProtocolError):
            chunks.extend(response.iter_raw())
    return Capture(family, content_type, tuple(chunks))


@pytest.fixture(scope="module")
def captures() -> dict[str, Capture]:
    config = EmulatorConfig(
        tokens_per_second=0, ttft=0, load_time=0, response_tokens=6, embedding_dimensions=8
    )
    config.models[f"{THINKER}:latest"] = ModelSpec(thinking=True)
    app = create_app(config)
    found: dict[str, Capture] = {}
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        for name, (family, path, body) in REQUESTS.items():
            found[name] = _capture(client, family, path, body)
        for name, (family, path, body, fault) in FAULTED.items():
            app.config.faults = [] if fault is None else [fault]
            found[name] = _capture(client, family, path, body)
    return found


def _emulator_usage(capture: Capture) -> tuple[int | None, int | None]:
    """The counts the emulator itself reported, read the plain way: whole body, every record."""
    body = capture.body.decode()
    if capture.content_type.startswith(NDJSON):
        items = [json.loads(line) for line in body.splitlines()]
    elif capture.content_type.startswith(SSE):
        items = [
            json.loads(event.removeprefix("data: "))
            for event in body.split("\n\n")
            if event.startswith("data: {")
        ]
    else:
        items = [json.loads(body)]
    if capture.family == "native":
        for item in items:
            if item.get("done") is True:
                return item.get("prompt_eval_count", 0), item.get("eval_count", 0)
            if "embeddings" in item:
                return item.get("prompt_eval_count", 0), None
        return None, None
    for item in items:
        if "usage" in item:
            return item["usage"]["prompt_tokens"], item["usage"].get("completion_tokens")
    return None, None


def _run(capture: Capture, chunks: list[bytes] | tuple[bytes, ...]) -> Meter:
    """Feed without stripping: every chunk must come back as the same object."""
    meter = Meter(family=capture.family, content_type=capture.content_type)
    for chunk in chunks:
        assert meter.feed(chunk) is chunk
    assert meter.finish() == b""
    return meter


def _strip(content_type: bytes, chunks: list[bytes] | tuple[bytes, ...]) -> tuple[Meter, bytes]:
    meter = Meter(family="openai", content_type=content_type, strip_usage=True)
    sent = [meter.feed(chunk) for chunk in chunks]
    sent.append(meter.finish())
    return meter, b"".join(sent)


def _tokens(meter: Meter) -> tuple[int | None, int | None]:
    return meter.prompt_tokens, meter.completion_tokens


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _random_chunks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks: list[bytes] = []
    at = 0
    while at < len(data):
        size = rng.choice((1, 2, 3, rng.randint(1, 64), rng.randint(1, 1024)))
        chunks.append(data[at : at + size])
        at += size
    return chunks


def _splits(data: bytes) -> Iterator[list[bytes]]:
    for at in range(len(data) + 1):
        yield [data[:at], data[at:]]


# -- real emulator streams ------------------------------------------------------------------


def test_the_captures_are_the_shapes_under_test(captures: dict[str, Capture]) -> None:
    assert captures["chat-stream"].content_type == NDJSON
    assert captures["chat-whole"].content_type == JSON
    assert captures["v1-chat-usage"].content_type == SSE
    assert b'"choices":[],"usage":' in captures["v1-chat-usage"].body
    assert b'"usage"' not in captures["v1-chat-stream"].body
    assert captures["chat-stream"].body.count(b"\n") == 7
    assert _emulator_usage(captures["chat-stream"])[1] == 6
    assert _emulator_usage(captures["generate-load-only"]) == (0, 0)
    assert _emulator_usage(captures["embed-empty"]) == (0, None)
    assert captures["missing-model"].content_type == JSON


@pytest.mark.parametrize("name", [*REQUESTS, *FAULTED])
def test_tokens_match_the_emulator_as_received(captures: dict[str, Capture], name: str) -> None:
    capture = captures[name]
    assert _tokens(_run(capture, capture.chunks)) == _emulator_usage(capture)


@pytest.mark.parametrize("name", REQUESTS)
def test_generation_and_embedding_counts_are_found(captures: dict[str, Capture], name: str) -> None:
    prompt, completion = _tokens(_run(captures[name], [captures[name].body]))
    if name == "v1-chat-stream" or name == "v1-completions-stream":
        assert (prompt, completion) == (None, None)
    elif name in ("generate-load-only", "embed-empty"):
        assert prompt == 0
    elif "embed" in name:
        assert prompt
        assert completion is None
    else:
        assert prompt
        assert completion
        assert completion >= 6


@pytest.mark.parametrize("name", [*REQUESTS, *FAULTED])
def test_any_chunking_gives_the_same_tokens(captures: dict[str, Capture], name: str) -> None:
    capture = captures[name]
    expected = _emulator_usage(capture)
    assert _tokens(_run(capture, _bytewise(capture.body))) == expected
    for seed in range(20):
        assert _tokens(_run(capture, _random_chunks(capture.body, seed))) == expected


@pytest.mark.parametrize("name", STREAMED)
def test_every_split_point_gives_the_same_tokens(captures: dict[str, Capture], name: str) -> None:
    capture = captures[name]
    expected = _emulator_usage(capture)
    for chunks in _splits(capture.body):
        assert _tokens(_run(capture, chunks)) == expected


def test_mid_stream_errors_are_recorded(captures: dict[str, Capture]) -> None:
    assert _run(captures["chat-error"], captures["chat-error"].chunks).error == "runner crashed"
    v1 = _run(captures["v1-chat-error"], _bytewise(captures["v1-chat-error"].body))
    assert v1.error == "runner crashed"
    assert _tokens(v1) == (None, None)
    assert _run(captures["chat-stream"], captures["chat-stream"].chunks).error is None
    assert _run(captures["missing-model"], captures["missing-model"].chunks).error is not None


# -- strip_usage ----------------------------------------------------------------------------

_VOLATILE = re.compile(rb'"(id|created)":("[^"]*"|\d+)')


def _stable(body: bytes) -> bytes:
    # Two requests differ only in their response id and creation second.
    return _VOLATILE.sub(rb'"\1":_', body)


@pytest.mark.parametrize(
    ("with_usage", "without"),
    [
        ("v1-chat-usage", "v1-chat-stream"),
        ("v1-completions-usage", "v1-completions-stream"),
    ],
)
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_strip_usage_sends_the_stream_the_client_asked_for(
    captures: dict[str, Capture], with_usage: str, without: str, line_end: bytes
) -> None:
    source = captures[with_usage]
    body = source.body.replace(b"\n", line_end)
    wanted = _stable(captures[without].body.replace(b"\n", line_end))
    expected = _emulator_usage(source)
    assert all(expected)
    received = [chunk.replace(b"\n", line_end) for chunk in source.chunks]
    chunkings = [[body], received, _bytewise(body)]
    chunkings += [_random_chunks(body, seed) for seed in range(20)]
    chunkings += list(_splits(body))
    for chunks in chunkings:
        meter, sent = _strip(source.content_type, chunks)
        assert _stable(sent) == wanted
        assert _tokens(meter) == expected


def test_strip_usage_forwards_complete_events_at_once(captures: dict[str, Capture]) -> None:
    body = captures["v1-chat-stream"].body
    meter = Meter(family="openai", content_type=SSE, strip_usage=True)
    assert meter.feed(body) is body
    meter = Meter(family="openai", content_type=SSE, strip_usage=True)
    assert meter.feed(b'data: {"a":1}\n\ndata: {"b"') == b'data: {"a":1}\n\n'
    assert meter.feed(b":2}\n") == b""
    assert meter.feed(b"\ndata: [DONE]\n\n") == b'data: {"b":2}\n\ndata: [DONE]\n\n'
    assert meter.finish() == b""


def test_strip_usage_returns_a_truncated_event_unchanged(captures: dict[str, Capture]) -> None:
    body = captures["v1-chat-usage"].body
    cut = body.index(b'"choices":[],"usage"') + 30
    meter, sent = _strip(SSE, [body[:cut]])
    assert sent == body[:cut]
    assert _tokens(meter) == (None, None)
    whole_event = body[: body.index(b"data: [DONE]") - 1]
    meter, sent = _strip(SSE, _bytewise(whole_event))
    assert sent == whole_event
    assert _tokens(meter) == _emulator_usage(captures["v1-chat-usage"])


def test_strip_usage_keeps_usage_that_rides_on_a_choice() -> None:
    event = b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\n'
    meter, sent = _strip(SSE, [event, b"data: [DONE]\n\n"])
    assert sent == event + b"data: [DONE]\n\n"
    assert _tokens(meter) == (4, 2)


def test_strip_usage_tolerates_spaces_and_a_bare_data_field() -> None:
    event = b'data:{"choices": [], "usage" : {"prompt_tokens": 5, "completion_tokens": 6}}\n\n'
    meter, sent = _strip(SSE, [b"data: {}\n\n" + event + b"data: [DONE]\n\n"])
    assert sent == b"data: {}\n\ndata: [DONE]\n\n"
    assert _tokens(meter) == (5, 6)


def test_strip_usage_is_ignored_outside_sse(captures: dict[str, Capture]) -> None:
    for name in ("chat-stream", "v1-chat-whole"):
        capture = captures[name]
        meter = Meter(family=capture.family, content_type=capture.content_type, strip_usage=True)
        for chunk in capture.chunks:
            assert meter.feed(chunk) is chunk
        assert meter.finish() == b""
        assert _tokens(meter) == _emulator_usage(capture)


# -- odd input ------------------------------------------------------------------------------

DONE = b'{"done":true,"prompt_eval_count":11,"eval_count":7}\n'


def _chunkings(data: bytes, seed: int) -> list[list[bytes]]:
    small = len(data) <= 64 << 10
    return [[data], _random_chunks(data, seed), *([_bytewise(data)] if small else [])]


def _native(data: bytes, content_type: bytes = NDJSON) -> Meter:
    """The meter after the last of several chunkings; each must forward chunks untouched."""
    meter = Meter(family="native", content_type=content_type)
    for chunks in _chunkings(data, 1):
        meter = Meter(family="native", content_type=content_type)
        for chunk in chunks:
            assert meter.feed(chunk) is chunk
        assert meter.finish() == b""
    return meter


def _openai(data: bytes, content_type: bytes = SSE) -> Meter:
    """The stripping meter after several chunkings; a plain meter must find the same."""
    for chunks in _chunkings(data, 2):
        meter, _ = _strip(content_type, chunks)
        plain = Meter(family="openai", content_type=content_type)
        for chunk in chunks:
            assert plain.feed(chunk) is chunk
        plain.finish()
        assert _tokens(plain) == _tokens(meter)
        assert plain.error == meter.error
    return meter


@pytest.mark.parametrize(
    "lines",
    [
        b"hello\nnot json at all\n",
        b'"done":true oops\n{"done":true,\n',
        b'[{"done":true,"eval_count":3}]\n',
        b'"done":true\n',
        b'{"done":true,"x":' + b"[" * 100_000 + b"\n",
        b'{"done":true,"eval_count":3,"bad":"\xff\xfe"}\n',
        b"\n\n\r\n",
    ],
    ids=["text", "broken", "array", "string", "deep", "bad-utf8", "blank"],
)
def test_unreadable_lines_are_skipped(lines: bytes) -> None:
    assert _tokens(_native(lines)) == (None, None)
    assert _tokens(_native(lines + DONE)) == (11, 7)


def test_counts_that_are_not_whole_numbers_count_as_absent() -> None:
    meter = _native(b'{"done":true,"prompt_eval_count":1.5,"eval_count":"7"}\n')
    assert _tokens(meter) == (0, 0)
    assert _tokens(_native(b'{"done":true,"prompt_eval_count":true,"eval_count":-3}\n')) == (0, 0)
    assert _tokens(_native(b'{"done":true}\n')) == (0, 0)
    event = b'data: {"choices":[],"usage":{"prompt_tokens":"3","completion_tokens":2.0}}\n\n'
    assert _tokens(_openai(event)) == (0, None)
    assert _tokens(_openai(b'data: {"choices":[],"usage":{}}\n\n')) == (0, None)


def test_crlf_spaces_and_bom() -> None:
    body = b'\xef\xbb\xbf{"done":false}\r\n'
    body += b'{"done" : true, "prompt_eval_count" : 4, "eval_count": 2}\r\n'
    assert _tokens(_native(body)) == (4, 2)
    assert _tokens(_native(b"\xef\xbb\xbf" + DONE)) == (11, 7)
    event = b'\xef\xbb\xbfdata: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    assert _tokens(_openai(event + b"\r\n\r\ndata: [DONE]\r\n\r\n")) == (3, 1)
    assert _tokens(_native(b"\xef\xbb\xbf" + DONE.rstrip(), JSON)) == (11, 7)


def test_an_unterminated_last_record_is_still_read() -> None:
    assert _tokens(_native(DONE.rstrip())) == (11, 7)
    event = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    meter, sent = _strip(SSE, [event])
    assert sent == event
    assert _tokens(meter) == (3, 1)


def test_empty_and_truncated_streams() -> None:
    for content_type in (NDJSON, SSE, JSON):
        meter = Meter(family="native", content_type=content_type)
        assert meter.feed(b"") == b""
        assert meter.finish() == b""
        assert _tokens(meter) == (None, None)
        assert meter.finish() == b""
    assert _tokens(_native(DONE[:30])) == (None, None)
    assert _tokens(_native(DONE[:30], JSON)) == (None, None)
    assert _tokens(_openai(b'data: {"choices":[],"usage":{"prompt_tok')) == (None, None)


def test_error_items() -> None:
    assert _native(b'{"done":false}\n{"error":"boom"}\n').error == "boom"
    assert _native(b'{"error": 5}\n').error == "5"
    assert _native(b'{"error": null}\n').error is None
    assert _native(b'{"error":"x' + b"y" * 5000 + b'"}\n', JSON).error == "x" + "y" * 1999
    event = b'data: {"error":{"message":"boom","type":"api_error","param":null,"code":null}}\n\n'
    assert _openai(event).error == "boom"
    assert _openai(b'{"error":{"message":"bad model"}}', JSON).error == "bad model"


def test_huge_lines_pass_through_unobserved() -> None:
    huge = b'{"done":true,"eval_count":5,"pad":"' + b"x" * (2 * MiB) + b'"}\n'
    meter = _native(huge)
    assert _tokens(meter) == (None, None)
    meter = Meter(family="native", content_type=NDJSON)
    for chunk in _random_chunks(huge + DONE, 3):
        assert meter.feed(chunk) is chunk
    meter.finish()
    assert _tokens(meter) == (11, 7)
    assert _tokens(_native(b"x" * (2 * MiB))) == (None, None)


def test_huge_events_are_released_and_stripping_resumes_after_them() -> None:
    huge = b'data: {"pad":"' + b"x" * (2 * MiB) + b'"}\r\n\r\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\r\n\r\n'
    done = b"data: [DONE]\r\n\r\n"
    for seed in range(3):
        meter, sent = _strip(SSE, _random_chunks(huge + usage + done, seed))
        assert sent == huge + done
        assert _tokens(meter) == (3, 1)
    meter = Meter(family="openai", content_type=SSE, strip_usage=True)
    sent = b"".join(meter.feed(chunk) for chunk in _random_chunks(huge[: 3 * MiB // 2], 4))
    # Past the record limit, held bytes go out rather than waiting for the event's end.
    assert len(sent) > MiB
    sent += meter.feed(huge[3 * MiB // 2 :] + usage) + meter.finish()
    assert sent == huge
    assert _tokens(meter) == (3, 1)


def test_large_embedding_answers_are_counted_from_their_tail() -> None:
    # A batch of a few hundred vectors passes 4 MiB; its counts come after the vectors.
    vectors = b"0.1," * (MiB + 10) + b"0.1"
    native = b'{"model":"m","embeddings":[' + vectors + b'],"prompt_eval_count":9}'
    for seed in range(3):
        meter = Meter(family="native", content_type=JSON)
        for chunk in _random_chunks(native, seed):
            assert meter.feed(chunk) is chunk
        meter.finish()
        assert _tokens(meter) == (9, None)
    openai = (
        b'{"object":"list","data":[{"embedding":[' + vectors + b']}],"model":"m",'
        b'"usage":{"prompt_tokens":12,"total_tokens":12}}'
    )
    meter = Meter(family="openai", content_type=JSON)
    for chunk in _random_chunks(openai, 4):
        meter.feed(chunk)
    meter.finish()
    assert _tokens(meter) == (12, None)
    # Counts that lie before the kept tail are not guessed at.
    early = b'{"prompt_eval_count":9,"embeddings":[' + vectors + b"]}"
    assert _tokens(_native(early, JSON)) == (None, None)
    assert _tokens(_native(b'{"embeddings":[],"prompt_eval_count":9}', JSON)) == (9, None)


def test_other_content_types_are_not_observed() -> None:
    for content_type in (b"text/plain", b"", b"application/octet-stream"):
        assert _tokens(_native(DONE, content_type)) == (None, None)
    upper = b"Application/X-NDJSON; charset=utf-8"
    assert _tokens(_native(DONE, upper)) == (11, 7)
