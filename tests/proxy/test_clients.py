"""The official clients through the proxy, against the emulator, with every credential form.

These are the clients users' test suites use: the ``ollama`` library (native routes) and the
``openai`` SDK (``/v1``), streaming and not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from ondemand.sandbox.ollama.app import Emulator
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, USER_KEY, ProxyFactory, serve_emulator

MODEL = "llama3.2"
EMBED = "nomic-embed-text"


@pytest.fixture
def emulator() -> Iterator[tuple[Emulator, BackgroundServer]]:
    yield from serve_emulator(f"{MODEL},{EMBED}=embed")


@pytest.fixture
def proxy_url(emulator: tuple[Emulator, BackgroundServer], start_proxy: ProxyFactory) -> str:
    return start_proxy(emulator[1].url).url


class Clients:
    """Client factories for one proxy URL; every client is closed at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._open: list[ollama.Client | openai.OpenAI] = []

    def ollama(self, form: str = "bearer", key: str = USER_KEY) -> ollama.Client:
        if form == "basic":
            client = ollama.Client(host=self.url, auth=("ci", key))
        else:
            name, value = (
                ("X-API-Key", key) if form == "x-api-key" else ("Authorization", f"Bearer {key}")
            )
            client = ollama.Client(host=self.url, headers={name: value})
        self._open.append(client)
        return client

    def openai(self, form: str = "bearer", key: str = USER_KEY) -> openai.OpenAI:
        if form == "x-api-key":
            # As on RunPod: the SDK's Authorization carries another key; ours is in X-API-Key.
            client = openai.OpenAI(
                base_url=self.url + "/v1", api_key="rpa_gateway", default_headers={"X-API-Key": key}
            )
        else:
            client = openai.OpenAI(base_url=self.url + "/v1", api_key=key)
        self._open.append(client)
        return client

    def close(self) -> None:
        for client in self._open:
            client.close()


@pytest.fixture
def clients(proxy_url: str) -> Iterator[Clients]:
    made = Clients(proxy_url)
    yield made
    made.close()


@pytest.mark.parametrize("form", ["bearer", "x-api-key", "basic"])
def test_ollama_client_chat_streaming_and_not(clients: Clients, form: str) -> None:
    client = clients.ollama(form)
    messages = [{"role": "user", "content": "hello"}]
    parts = list(client.chat(model=MODEL, messages=messages, stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert final.eval_count == len(parts) - 1
    assert "".join(p.message.content or "" for p in parts[:-1])
    whole = client.chat(model=MODEL, messages=messages)
    assert whole.done
    assert whole.message.content
    assert whole.eval_count


def test_ollama_client_generate_embed_and_model_store(clients: Clients) -> None:
    client = clients.ollama("bearer")
    assert client.generate(model=MODEL, prompt="hi").response
    assert len(client.embed(model=EMBED, input=["a", "b"]).embeddings) == 2
    names = {m.model for m in client.list().models}
    assert {f"{MODEL}:latest", f"{EMBED}:latest"} <= names
    assert client.show(MODEL).details is not None
    assert any(m.model == f"{MODEL}:latest" for m in client.ps().models)


def test_ollama_client_admin_routes_need_the_admin_key(clients: Clients) -> None:
    user = clients.ollama("bearer")
    with pytest.raises(ollama.ResponseError) as refused:
        user.pull("qwen3:0.6b")
    assert refused.value.status_code == 403
    admin = clients.ollama("bearer", ADMIN_KEY)
    statuses = [p.status for p in admin.pull("qwen3:0.6b", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    admin.delete("qwen3:0.6b")  # a DELETE with a JSON body: it must reach Ollama intact
    assert "qwen3:0.6b" not in {m.model for m in admin.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        admin.delete("qwen3:0.6b")
    assert missing.value.status_code == 404


def test_ollama_client_sees_auth_failures_and_ollama_errors(clients: Clients) -> None:
    wrong = clients.ollama("bearer", "not-a-key")
    with pytest.raises(ollama.ResponseError) as refused:
        wrong.list()
    assert refused.value.status_code == 401
    client = clients.ollama("x-api-key")
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    assert "not found" in missing.value.error


@pytest.mark.anyio
async def test_async_ollama_client_streams(proxy_url: str) -> None:
    client = ollama.AsyncClient(host=proxy_url, headers={"X-API-Key": USER_KEY})
    try:
        stream = await client.generate(model=MODEL, prompt="hi", stream=True)
        parts = [part async for part in stream]
    finally:
        await client.close()  # type: ignore[no-untyped-call]
    assert parts[-1].done
    assert parts[-1].eval_count == len(parts) - 1


@pytest.mark.parametrize("form", ["bearer", "x-api-key"])
def test_openai_sdk_chat_streaming_with_usage_and_not(clients: Clients, form: str) -> None:
    client = clients.openai(form)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "hello"}
    ]
    whole = client.chat.completions.create(model=MODEL, messages=messages)
    assert whole.choices[0].message.content
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_models_embeddings_and_completions(clients: Clients) -> None:
    client = clients.openai("bearer")
    assert {m.id for m in client.models.list()} >= {f"{MODEL}:latest", f"{EMBED}:latest"}
    vectors = client.embeddings.create(model=EMBED, input=["a", "b"])
    assert len(vectors.data) == 2
    assert len(vectors.data[0].embedding) > 0
    assert client.completions.create(model=MODEL, prompt="once upon").choices[0].text


def test_openai_sdk_errors(clients: Clients) -> None:
    with pytest.raises(openai.AuthenticationError):
        clients.openai("bearer", "wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        clients.openai("bearer").chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )


def test_non_json_body_gets_ollamas_own_400(proxy_url: str) -> None:
    response = httpx.post(
        proxy_url + "/api/chat", headers={"X-API-Key": USER_KEY}, content=b"{not json"
    )
    assert response.status_code == 400
    assert "invalid character" in response.json()["error"]


def test_disconnect_through_the_proxy_stops_the_generation(
    emulator: tuple[Emulator, BackgroundServer], start_proxy: ProxyFactory
) -> None:
    app, upstream = emulator
    app.patch_config({"tokens_per_second": 50, "response_tokens": 10_000})
    proxy = start_proxy(upstream.url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST", proxy.url + "/api/chat", headers={"X-API-Key": USER_KEY}, json=body
    ) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
        closed_at = time.time()
    deadline = time.monotonic() + 2
    while not app.cancels() and time.monotonic() < deadline:
        time.sleep(0.005)
    cancels = app.cancels()
    assert len(cancels) == 1
    assert cancels[0]["route"] == "/api/chat"
    assert float(cancels[0]["time"]) - closed_at < 0.5
    assert int(cancels[0]["tokens_sent"]) < 100
