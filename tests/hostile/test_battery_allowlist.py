"""The model allow-list of a key limited to ``llama3.2``, in JSON bodies: every spelling of
that model passes, every other model is 403 (or 400 when the body cannot be read) and never
reaches Ollama. Multipart bodies are covered in test_policy.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ondemand.modelnames import canonical
from tests.hostile.conftest import (
    LIMITED_KEY,
    USER_KEY,
    Process,
    RawUpstream,
    json_post,
    raw,
    release_lease,
    request,
    take_lease,
)

ROUTES = ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/v1/chat/completions",
          "/v1/embeddings", "/v1/responses", "/v1/messages"]  # fmt: skip

SAME_MODEL = [
    "llama3.2",
    "LLAMA3.2",
    "Llama3.2:Latest",
    "llama3.2:latest",
    "library/llama3.2",
    "registry.ollama.ai/library/llama3.2:latest",
    "REGISTRY.OLLAMA.AI/LIBRARY/LLAMA3.2",
]
OTHER_MODELS = [
    "mistral",
    "llama3.2:1b",
    "llama3.2:latest-q8",
    "llama3.2-vision",
    "llama3",
    "someone/llama3.2",
    "hf.co/someone/llama3.2",
    "registry.example.com/library/llama3.2",
    "llama3.2/../mistral",
    "ll\u0430ma3.2",  # Cyrillic a
    "llama3\u20222",  # bullet for the dot
    "llama3.2\u200b",  # zero-width space
    "\uff4c\uff4c\uff41\uff4d\uff41\uff13.\uff12",  # full-width
    "llama3.2\u0000",
]


@pytest.fixture(params=["keys file", "per-run key"])
def limited_key(request: pytest.FixtureRequest, proxy: Process) -> Iterator[str]:
    if request.param == "keys file":
        yield LIMITED_KEY
        return
    lease_id, key = take_lease(proxy.port, models=["llama3.2"])
    yield key
    release_lease(proxy.port, lease_id)


def _forwarded_model(body: bytes) -> str:
    data = json.loads(body)
    assert isinstance(data, dict)
    found = [v for k, v in data.items() if k.lower() == "model"]
    return str(found[-1])


@pytest.mark.parametrize("model", SAME_MODEL)
def test_spellings_of_the_allowed_model_pass(
    proxy: Process, clean: RawUpstream, limited_key: str, model: str
) -> None:
    for route in ROUTES:
        body = json.dumps({"model": model, "messages": []}).encode()
        assert raw(proxy.port, json_post(route, body, key=limited_key)).status == 200, route
    assert len(clean.seen) == len(ROUTES)
    assert {canonical(_forwarded_model(seen.body)) for seen in clean.seen} == {"llama3.2:latest"}


@pytest.mark.parametrize("model", [*OTHER_MODELS, ""])
def test_other_models_are_refused_and_never_forwarded(
    proxy: Process, clean: RawUpstream, limited_key: str, model: str
) -> None:
    for route in ROUTES:
        body = json.dumps({"model": model, "messages": []}).encode()
        answer = raw(proxy.port, json_post(route, body, key=limited_key))
        assert answer.status in (400, 403), (route, model, answer.status)
    assert clean.seen == []


@pytest.mark.parametrize("model", [" llama3.2", "llama3.2 ", "\tllama3.2\n", " LLAMA3.2:latest "])
def test_whitespace_around_the_allowed_model_never_becomes_another_model(
    proxy: Process, clean: RawUpstream, limited_key: str, model: str
) -> None:
    body = json.dumps({"model": model, "prompt": "hi"}).encode()
    answer = raw(proxy.port, json_post("/api/generate", body, key=limited_key))
    assert answer.status in (200, 400, 403)
    for seen in clean.seen:
        assert canonical(_forwarded_model(seen.body)) == "llama3.2:latest"


BODIES = {
    "duplicate, last wins": b'{"model":"llama3.2","model":"mistral"}',
    "case of the field": b'{"model":"llama3.2","MODEL":"mistral"}',
    "mixed-case field only": b'{"Model":"mistral"}',
    "escaped name": b'{"model":"mistr\\u0061l"}',
    "escaped field": b'{"model":"llama3.2","\\u006dodel":"mistral"}',
    "model not a string": b'{"model":["mistral"]}',
    "model null then set": b'{"model":null,"model":"mistral"}',
    "two objects": b'{"model":"llama3.2"}{"model":"mistral"}',
    "array": b'[{"model":"mistral"}]',
    "trailing garbage": b'{"model":"mistral"} x',
    "BOM": b'\xef\xbb\xbf{"model":"mistral"}',
    "not UTF-8": b'{"model":"mistral\xff"}',
    "no model": b'{"prompt":"hi"}',
    "empty model": b'{"model":""}',
    "deep nesting": b'{"x":' * 2000 + b"1" + b"}" * 2000,
    "NaN": b'{"model":"llama3.2","options":{"temperature":NaN},"model":"mistral"}',
}


@pytest.mark.parametrize("route", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("key", [LIMITED_KEY, USER_KEY])
def test_a_body_nested_too_deep_to_read_is_an_answer_not_a_crash(
    proxy: Process, clean: RawUpstream, route: str, key: str
) -> None:
    body = b'{"x":' * 10_000 + b"1" + b"}" * 10_000  # under the 64 KiB cap
    answer = raw(proxy.port, json_post(route, body, key=key))
    # Refused for a restricted key; for others forwarded untouched, for Ollama to refuse.
    assert answer.status == (400 if key == LIMITED_KEY else 200), answer.body
    assert [seen.body for seen in clean.seen] == ([] if key == LIMITED_KEY else [body])
    assert "Traceback" not in proxy.output()


@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
def test_json_tricks_never_forward_another_model(
    proxy: Process, clean: RawUpstream, body: bytes
) -> None:
    answer = raw(proxy.port, json_post("/api/chat", body, key=LIMITED_KEY))
    assert answer.status in (400, 403), (answer.status, answer.body)
    assert clean.seen == []


@pytest.mark.parametrize("model", ["mistral", "llama3.2%3A1b", "someone%2Fllama3.2"])
def test_the_model_in_a_path_is_checked_too(proxy: Process, clean: RawUpstream, model: str) -> None:
    answer = raw(proxy.port, request("GET", f"/v1/models/{model}", key=LIMITED_KEY))
    assert answer.status == 403
    assert clean.seen == []
    assert raw(proxy.port, request("GET", "/v1/models/llama3.2", key=LIMITED_KEY)).status == 200


def test_listings_show_only_the_allowed_model(proxy: Process, clean: RawUpstream) -> None:
    answer = raw(proxy.port, request("GET", "/api/tags", key=LIMITED_KEY))
    assert answer.status == 200
    listed = answer.json()
    assert isinstance(listed, dict)
    assert [m["name"] for m in listed["models"]] == ["llama3.2:latest"]
