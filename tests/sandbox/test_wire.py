"""Exact bytes a proxy or a hand-written client sees: framing, headers and error bodies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

import httpx
import pytest

from ondemand.asgi import Message
from ondemand.sandbox.ollama import Emulator, ModelSpec, create_app
from ondemand.sandbox.ollama.config import BUSY
from ondemand.sandbox.ollama.text import REPLY, THOUGHTS
from tests.sandbox.conftest import Serve, fast_config

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


def ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text[:-1].split("\n")]


def test_generate_stream_lines_and_final_line(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    r = httpx.post(url + "/api/generate", json={"model": "llama3.2", "prompt": "hi"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert "content-length" not in r.headers
    lines = ndjson(r.text)
    assert [line["response"] for line in lines[:-1]] == list(REPLY)
    for line in lines[:-1]:
        assert list(line) == ["model", "created_at", "response", "done"]
        assert line["done"] is False
        assert line["model"] == "llama3.2"
        assert STAMP.match(line["created_at"])
    final = lines[-1]
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        *METRICS,
    ]
    assert final["response"] == ""
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert all(isinstance(final[k], int) and final[k] > 0 for k in METRICS)


def test_chat_final_line_shape(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    body = {"model": "LLAMA3.2:Latest", "messages": [{"role": "user", "content": "hi"}]}
    lines = ndjson(httpx.post(url + "/api/chat", json=body).text)
    assert lines[0] == {
        "model": "LLAMA3.2:Latest",
        "created_at": lines[0]["created_at"],
        "message": {"role": "assistant", "content": "Hello"},
        "done": False,
    }
    final = lines[-1]
    assert list(final)[:5] == ["model", "created_at", "message", "done_reason", "done"]
    assert list(final)[5:] == METRICS
    assert final["message"] == {"role": "assistant", "content": ""}
    assert "context" not in final


@pytest.mark.anyio
async def test_every_token_is_its_own_body_message() -> None:
    app = create_app(fast_config())
    sent: list[Message] = []
    requests = [{"type": "http.request", "body": b'{"model":"llama3.2","prompt":"x"}'}]

    async def receive() -> Message:
        if requests:
            return requests.pop()
        # A client that stays connected: the emulator stops waiting once it has answered.
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/generate", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    bodies = sent[1:]
    assert len(bodies) == len(REPLY) + 1
    for message in bodies[:-1]:
        assert message["more_body"] is True
        assert message["body"].count(b"\n") == 1
        assert message["body"].endswith(b"\n")
    assert bodies[-1]["more_body"] is False
    assert app.stats.cancelled == 0
    assert app.stats.completed == 1


def test_thinking_model_streams_thinking_before_content(serve: Serve) -> None:
    _, url = serve(models={"qwen3:latest": ModelSpec(thinking=True)})
    lines = ndjson(
        httpx.post(url + "/api/chat", json={"model": "qwen3", "messages": [{"content": "x"}]}).text
    )
    thoughts = [
        line["message"].get("thinking") for line in lines if line["message"].get("thinking")
    ]
    assert thoughts == list(THOUGHTS)
    assert lines[0]["message"] == {"role": "assistant", "content": "", "thinking": "Okay"}
    off = httpx.post(
        url + "/api/generate",
        json={"model": "qwen3", "prompt": "x", "think": False, "stream": False},
    ).json()
    assert "thinking" not in off
    assert off["response"] == "".join(REPLY)
    plain = httpx.post(url + "/api/pull", json={"model": "llama3.2", "stream": False})
    assert plain.status_code == 200
    refused = httpx.post(url + "/api/generate", json={"model": "llama3.2", "think": True})
    assert refused.status_code == 400
    assert refused.json() == {"error": '"llama3.2" does not support thinking'}


def test_sse_framing_and_done_marker(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    assert r.text.endswith("data: [DONE]\n\n")
    events = r.text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "!"}
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(REPLY)
    assert len(chunks) == len(REPLY) + 2


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/nope", 404, "404 page not found"),
        ("GET", "/api/chat", 405, "405 method not allowed"),
        ("POST", "/api/tags", 405, "405 method not allowed"),
        ("GET", "/api/delete", 405, "405 method not allowed"),
        ("GET", "/v1/models/a/b", 404, "404 page not found"),
        ("GET", "/", 200, "Ollama is running"),
    ],
)
def test_routing_misses_are_plain_text(
    emulator: tuple[Emulator, str], method: str, path: str, status: int, text: str
) -> None:
    _, url = emulator
    r = httpx.request(method, url + path)
    assert (r.status_code, r.text) == (status, text)
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"  \n", "missing request body"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b'{"model":', "unexpected EOF"),
        (b'{"model" "x"}', "invalid character '\"' after object key"),
        (b'{"model":"x",}', "invalid character '}' looking for beginning of object key string"),
        (b'{"model":tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b"[1]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            b'{"model":"llama3.2","stream":"yes"}',
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (b'{"model":"llama3.2","keep_alive":"-1"}', 'time: missing unit in duration "-1"'),
        (b'{"model":"llama3.2","keep_alive":"5x"}', 'time: unknown unit "x" in duration "5x"'),
        (b'{"model":""}', "model is required"),
    ],
)
def test_request_errors_match_ollama(
    emulator: tuple[Emulator, str], body: bytes, message: str
) -> None:
    _, url = emulator
    r = httpx.post(url + "/api/chat", content=body)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"error": message}


def test_not_found_messages_follow_each_route(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    cases = [
        ("/api/generate", {"model": "Nope"}, "model 'Nope' not found"),
        ("/api/generate", {"model": ""}, "model '' not found"),
        ("/api/show", {"model": "Nope"}, "model 'Nope:latest' not found"),
        (
            "/api/embed",
            {"model": "nope", "input": "x"},
            'model "nope" not found, try pulling it first',
        ),
        ("/api/copy", {"source": "nope", "destination": "b"}, 'model "nope" not found'),
    ]
    for path, body, message in cases:
        r = httpx.post(url + path, json=body)
        assert (r.status_code, r.json()) == (404, {"error": message}), path


def test_decoder_is_lenient_like_go(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    body = b'{"MODEL":"llama3.2","Prompt":"hi","stream":false,"unknown":[1,2]} trailing'
    r = httpx.post(url + "/api/generate", content=body)
    assert r.status_code == 200
    assert r.json()["response"] == "".join(REPLY)


def test_openai_errors_use_the_openai_shape(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    r = httpx.post(url + "/v1/chat/completions", content=b"")
    assert r.status_code == 400
    assert r.json() == {
        "error": {"message": "EOF", "type": "invalid_request_error", "param": None, "code": None}
    }
    r = httpx.post(
        url + "/v1/embeddings",
        json={"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        url + "/v1/chat/completions", json={"model": "nomic-embed-text", "messages": [{}]}
    )
    assert r.json()["error"]["message"] == '"nomic-embed-text" does not support chat'


def test_fault_answers_with_the_real_busy_body(emulator: tuple[Emulator, str]) -> None:
    app, url = emulator
    app.patch_config({"faults": [{"path": "/api/chat", "times": 2, "status": 503}]})
    body = {"model": "llama3.2", "messages": [{"content": "x"}], "stream": False}
    first = httpx.post(url + "/api/chat", json=body)
    assert first.status_code == 503
    assert (
        first.content
        == b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    )
    assert first.json()["error"] == BUSY
    assert httpx.post(url + "/api/chat", json=body).status_code == 503
    assert httpx.post(url + "/api/chat", json=body).status_code == 200
    app.patch_config({"faults": [{"path": "/v1/*", "status": 500}]})
    r = httpx.post(url + "/v1/chat/completions", json={"model": "llama3.2", "messages": [{}]})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "api_error"
    assert app.stats.faults == 3


def test_legacy_embeddings_status_and_blobs(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    legacy = httpx.post(url + "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hi"})
    vector = legacy.json()["embedding"]
    assert len(vector) == 768
    assert abs(sum(v * v for v in vector) - 1.0) > 0.1  # legacy vectors are not normalised
    empty = httpx.post(url + "/api/embeddings", json={"model": "nomic-embed-text"})
    assert empty.json() == {"embedding": []}
    assert httpx.get(url + "/api/status").json() == {"cloud": {"disabled": False, "source": "none"}}

    data = b"GGUF blob"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_url = url + "/api/blobs/" + digest
    assert httpx.head(blob_url).status_code == 404
    wrong = httpx.post(url + "/api/blobs/sha256-" + "0" * 64, content=data)
    assert wrong.status_code == 400
    assert wrong.json()["error"].startswith('digest mismatch, expected "sha256:000')
    assert httpx.post(blob_url, content=data).status_code == 201
    assert httpx.post(blob_url, content=data).status_code == 200
    assert httpx.head(blob_url).status_code == 200
    bad = httpx.post(url + "/api/blobs/md5:abc", content=data)
    assert bad.json() == {"error": "invalid digest format"}


def test_stop_sequences_end_the_reply(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    body = {"model": "llama3.2", "prompt": "x", "stream": False, "options": {"stop": [" reply"]}}
    answer = httpx.post(url + "/api/generate", json=body).json()
    assert answer["response"] == "Hello! This"
    assert answer["done_reason"] == "stop"
    wrong = {**body, "options": {"num_ctx": "big"}}
    assert httpx.post(url + "/api/generate", json=wrong).json() == {
        "error": 'option "num_ctx" must be of type integer'
    }
