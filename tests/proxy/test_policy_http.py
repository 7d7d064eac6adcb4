"""Policy and metering through a real proxy: what a team handing out keys relies on."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from ondemand.asgi import Receive, Scope, Send, read_body, send_json
from ondemand.proxy.auth import sha256_form
from ondemand.sandbox.ollama.app import Emulator
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, ProxyFactory, serve_emulator
from tests.proxy.recorder import Recorder

CI_KEY = "odk_ci_key_0123456789abcdef"
OPEN_KEY = "odk_open_key_0123456789abcd"
EMBED = "nomic-embed-text"


@dataclass
class Receiver:
    """A webhook endpoint that keeps every record it is sent."""

    records: list[dict[str, object]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.records.extend(json.loads(await read_body(receive))["records"])
        await send_json(send, 200, {"ok": True})

    def wait(self, count: int, timeout: float = 5) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.records


@pytest.fixture
def emulator() -> Iterator[tuple[Emulator, BackgroundServer]]:
    yield from serve_emulator(f"llama3.2,qwen3:0.6b,{EMBED}=embed")


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, BackgroundServer]]:
    app = Receiver()
    with BackgroundServer(app) as server:
        yield app, server


def keys_file(tmp_path: Path, **ci: object) -> Path:
    entries = [
        {"name": "ci", "sha256": sha256_form(CI_KEY), "models": ["llama3.2", EMBED], **ci},
        {"name": "open", "key": OPEN_KEY},
        {"name": "ops", "key": ADMIN_KEY, "admin": True},
    ]
    path = tmp_path / "keys.yml"
    path.write_text(json.dumps(entries))  # JSON is YAML
    return path


def env_for(tmp_path: Path, receiver_url: str | None = None, **extra: object) -> dict[str, str]:
    env = {"ONDEMAND_KEYS_FILE": str(keys_file(tmp_path, **extra.pop("ci", {})))}  # type: ignore[arg-type]
    if receiver_url:
        env["USER_MODEL_METRICS_WEBHOOK_URL"] = receiver_url
        env["ONDEMAND_WEBHOOK_INTERVAL"] = "0.05"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- models a key may use ------------------------------------------------------------


def test_allow_list_on_native_and_v1_routes_with_the_official_clients(
    emulator: tuple[Emulator, BackgroundServer], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start_proxy(emulator[1].url, env_for(tmp_path))
    native = ollama.Client(host=proxy.url, headers=h(CI_KEY))
    assert native.chat(model="LLAMA3.2:latest", messages=[{"role": "user", "content": "x"}]).done
    with pytest.raises(ollama.ResponseError) as refused:
        native.chat(model="qwen3:0.6b", messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 403
    assert "model 'qwen3:0.6b' is not allowed for this key" in refused.value.error
    assert len(native.embed(model=EMBED, input=["a", "b", "c"]).embeddings) == 3
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=CI_KEY)
    with pytest.raises(openai.PermissionDeniedError, match=r"qwen3:0\.6b"):
        client.chat.completions.create(
            model="qwen3:0.6b", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve("qwen3:0.6b")
    assert client.models.retrieve("llama3.2:latest").id == "llama3.2:latest"
    # Lists show this key only its models; another key sees them all.
    assert {m.id for m in client.models.list()} == {"llama3.2:latest", f"{EMBED}:latest"}
    assert {m.model for m in native.list().models} == {"llama3.2:latest", f"{EMBED}:latest"}
    assert {m.model for m in native.ps().models} <= {"llama3.2:latest", f"{EMBED}:latest"}
    other = ollama.Client(host=proxy.url, headers=h(OPEN_KEY))
    assert "qwen3:0.6b" in {m.model for m in other.list().models}
    native.close()  # type: ignore[no-untyped-call]
    other.close()  # type: ignore[no-untyped-call]
    client.close()


def test_a_restricted_key_cannot_smuggle_a_model_past_the_check(
    emulator: tuple[Emulator, BackgroundServer], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    app, upstream = emulator
    proxy = start_proxy(upstream.url, env_for(tmp_path))
    tricks = [
        b'{"MODEL": "qwen3:0.6b", "prompt": "x"}',
        b'{"model": "llama3.2", "Model": "qwen3:0.6b", "prompt": "x"}',
        b'{"model": "llama3.2"} {"model": "qwen3:0.6b"}',
        b'{"model": "qwen3:0.6b", "prompt": "\xff"}',
    ]
    for body in tricks:
        response = httpx.post(proxy.url + "/api/generate", headers=h(CI_KEY), content=body)
        assert response.status_code in (400, 403), body
    assert app.stats.routes.get("POST /api/generate", 0) == 0


# -- limits ---------------------------------------------------------------------------


@dataclass
class Slow:
    """An upstream that holds each request a while and remembers the most at once."""

    active: int = 0
    peak: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.2)
        finally:
            self.active -= 1
        await send_json(send, 200, {"ok": True})


def test_concurrency_limit_holds_under_racing_requests_with_429_and_retry_after(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    slow = Slow()
    with BackgroundServer(slow) as upstream:
        proxy = start_proxy(upstream.url, env_for(tmp_path, ci={"max_concurrency": 3}))

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(headers=h(CI_KEY), timeout=10) as client:
                body = {"model": "llama3.2"}
                return await asyncio.gather(
                    *(client.post(proxy.url + "/api/chat", json=body) for _ in range(30))
                )

        answers = asyncio.run(burst())
    codes = [r.status_code for r in answers]
    assert codes.count(200) >= 3
    assert codes.count(200) + codes.count(429) == 30
    assert slow.peak <= 3  # never more than the limit reached Ollama at once
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert "this key allows 3 requests at once" in refused.json()["error"]


def test_requests_per_minute_and_the_global_cap(
    start_proxy: ProxyFactory, tmp_path: Path, recorder: tuple[Recorder, BackgroundServer]
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url, env_for(tmp_path, ci={"rpm": 3}))
    codes = [httpx.get(proxy.url + "/api/tags", headers=h(CI_KEY)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    last = httpx.get(proxy.url + "/v1/models", headers=h(CI_KEY))
    assert last.status_code == 429
    assert 1 <= int(last.headers["retry-after"]) <= 60
    assert last.json()["error"]["type"] == "rate_limit_error"
    # Another key has its own budget.
    assert httpx.get(proxy.url + "/api/tags", headers=h(OPEN_KEY)).status_code == 200

    slow = Slow()
    with BackgroundServer(slow) as slow_upstream:
        capped = start_proxy(slow_upstream.url, env_for(tmp_path, ONDEMAND_MAX_INFLIGHT=2))

        async def burst() -> list[int]:
            async with httpx.AsyncClient(headers=h(OPEN_KEY), timeout=10) as client:
                answers = await asyncio.gather(
                    *(client.post(capped.url + "/api/chat", json={}) for _ in range(10))
                )
            return [a.status_code for a in answers]

        assert sorted(set(asyncio.run(burst()))) == [200, 429]
        assert slow.peak <= 2


# -- keep-alive ------------------------------------------------------------------------


def test_no_client_can_pin_a_model_past_the_cap(
    emulator: tuple[Emulator, BackgroundServer], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _, upstream = emulator
    proxy = start_proxy(upstream.url, env_for(tmp_path, ONDEMAND_MAX_KEEP_ALIVE="10m"))
    client = ollama.Client(host=proxy.url, headers=h(OPEN_KEY))
    client.generate(model="qwen3:0.6b", prompt="x", keep_alive=-1)
    ps = {m.model: m.expires_at for m in client.ps().models}
    expires = ps["qwen3:0.6b"]
    assert expires is not None
    assert expires.timestamp() - time.time() < 601  # not the year 2318 that -1 means
    client.close()  # type: ignore[no-untyped-call]


# -- usage -----------------------------------------------------------------------------


def test_usage_records_match_the_tokens_clients_saw(
    emulator: tuple[Emulator, BackgroundServer],
    receiver: tuple[Receiver, BackgroundServer],
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    sink, hook = receiver
    proxy = start_proxy(emulator[1].url, env_for(tmp_path, hook.url))
    native = ollama.Client(host=proxy.url, headers=h(CI_KEY))
    messages = [{"role": "user", "content": "hello there"}]
    expected: list[tuple[str, int | None, int | None]] = []

    parts = list(native.chat(model="llama3.2", messages=messages, stream=True))
    expected.append(("/api/chat", parts[-1].prompt_eval_count, parts[-1].eval_count))
    whole = native.generate(model="llama3.2", prompt="hi")
    expected.append(("/api/generate", whole.prompt_eval_count, whole.eval_count))
    embedded = native.embed(model=EMBED, input=["a", "b"])
    expected.append(("/api/embed", embedded.prompt_eval_count, None))

    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=CI_KEY)
    asked = list(client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    usage = asked[-1].usage
    assert usage is not None
    expected.append(("/v1/chat/completions", usage.prompt_tokens, usage.completion_tokens))
    # Not asked: the proxy asks Ollama anyway, and the client never sees the usage chunk.
    unasked = list(client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True,
    ))  # fmt: skip
    assert all(chunk.usage is None for chunk in unasked)
    assert all(chunk.choices for chunk in unasked)
    expected.append(("/v1/chat/completions", usage.prompt_tokens, usage.completion_tokens))
    plain = client.completions.create(model="llama3.2", prompt="once")
    assert plain.usage is not None
    expected.append(("/v1/completions", plain.usage.prompt_tokens, plain.usage.completion_tokens))
    vectors = client.embeddings.create(model=EMBED, input=["a", "b", "c"])
    expected.append(("/v1/embeddings", vectors.usage.prompt_tokens, None))
    native.close()  # type: ignore[no-untyped-call]
    client.close()

    records = sink.wait(len(expected))
    assert len(records) == len(expected)
    seen = [(r["route"], r["prompt_tokens"], r["completion_tokens"]) for r in records]
    assert seen == expected
    fields = {"ts", "request_id", "key_name", "model", "route", "method", "status",
              "prompt_tokens", "completion_tokens", "duration_ms", "ttft_ms"}  # fmt: skip
    for record in records:
        assert set(record) == fields  # docs/proxy.md's record, every field and no other
        assert record["key_name"] == "ci"
        assert record["status"] == 200
        assert isinstance(record["ttft_ms"], float)
        assert record["duration_ms"] >= record["ttft_ms"]  # type: ignore[operator]
        assert CI_KEY not in json.dumps(record)
    assert {r["model"] for r in records} == {"llama3.2", EMBED}


def test_metrics_status_request_ids_and_the_access_log(
    emulator: tuple[Emulator, BackgroundServer],
    start_proxy: ProxyFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ondemand.proxy.access")
    proxy = start_proxy(emulator[1].url, env_for(tmp_path))
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": False}
    answer = httpx.post(proxy.url + "/api/chat", json=body,
                        headers={**h(CI_KEY), "X-Request-Id": "run-42.job-7"})  # fmt: skip
    assert answer.headers["x-request-id"] == "run-42.job-7"
    generated = httpx.get(proxy.url + "/api/tags", headers={**h(CI_KEY), "X-Request-Id": "bad id!"})
    assert generated.headers["x-request-id"] != "bad id!"
    assert len(generated.headers["x-request-id"]) == 16
    assert httpx.get(proxy.url + "/api/tags", headers=h("odk_wrong")).status_code == 401

    assert httpx.get(proxy.url + "/metrics", headers=h(CI_KEY)).status_code == 403
    metrics = httpx.get(proxy.url + "/metrics", headers=h(ADMIN_KEY))
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    labels = 'key="ci",model="llama3.2:latest",route="/api/chat",status="200"'
    assert f"ondemand_requests_total{{{labels}}} 1.0" in text
    assert 'ondemand_tokens_total{direction="completion",key="ci",model="llama3.2:latest"}' in text
    assert 'ondemand_auth_failures_total{reason="invalid"} 1.0' in text
    assert "ondemand_time_to_first_byte_seconds_bucket" in text
    assert "ondemand_requests_in_flight 0.0" in text

    own = httpx.get(proxy.url + "/ondemand/status", headers=h(CI_KEY)).json()
    assert set(own["usage"]) == {"ci"}
    assert own["usage"]["ci"]["requests"] == 2
    assert own["usage"]["ci"]["completion_tokens"] == answer.json()["eval_count"]
    assert "limits" not in own
    every = httpx.get(proxy.url + "/ondemand/status", headers=h(ADMIN_KEY)).json()
    assert every["limits"]["keys"]["ci"]["models"] == ["llama3.2:latest", f"{EMBED}:latest"]
    assert own["idle_seconds"] is not None

    lines = [r for r in caplog.records if r.name == "ondemand.proxy.access"]
    chat = next(r for r in lines if getattr(r, "request_id", None) == "run-42.job-7")
    assert (chat.key, chat.model, chat.status) == ("ci", "llama3.2", 200)  # type: ignore[attr-defined]
    assert chat.completion_tokens == answer.json()["eval_count"]  # type: ignore[attr-defined]
    assert not any(CI_KEY in r.getMessage() for r in lines)


# -- CORS and reloading keys -------------------------------------------------------------


def test_cors_is_off_unless_origins_are_listed(
    recorder: tuple[Recorder, BackgroundServer], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _, upstream = recorder
    origin = {"Origin": "https://staging.example.com"}
    closed = start_proxy(upstream.url, env_for(tmp_path))
    plain = httpx.get(closed.url + "/api/tags", headers={**h(OPEN_KEY), **origin})
    assert "access-control-allow-origin" not in plain.headers
    opened = start_proxy(
        upstream.url, env_for(tmp_path, ONDEMAND_CORS_ORIGINS="https://staging.example.com")
    )
    preflight = httpx.options(opened.url + "/api/chat", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    })  # fmt: skip
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://staging.example.com"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    real = httpx.get(opened.url + "/api/tags", headers={**h(OPEN_KEY), **origin})
    assert real.headers["access-control-allow-origin"] == "https://staging.example.com"
    other = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert httpx.options(opened.url + "/api/chat", headers=other).status_code == 403
    assert (
        "access-control-allow-origin"
        not in httpx.get(
            opened.url + "/api/tags", headers={**h(OPEN_KEY), "Origin": "https://evil.example"}
        ).headers
    )


def test_the_keys_file_reloads_and_a_broken_one_keeps_the_last_good_keys(
    recorder: tuple[Recorder, BackgroundServer],
    start_proxy: ProxyFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("ondemand.proxy.app.KEYS_RELOAD_INTERVAL", 0.05)
    _, upstream = recorder
    env = env_for(tmp_path)
    proxy = start_proxy(upstream.url, env)
    path = Path(env["ONDEMAND_KEYS_FILE"])
    new_key = "odk_new_key_0123456789abcdef"
    assert httpx.get(proxy.url + "/api/tags", headers=h(new_key)).status_code == 401
    entries = json.loads(path.read_text())
    path.write_text(json.dumps([*entries, {"name": "new", "key": new_key}]))

    def status(key: str) -> int:
        return httpx.get(proxy.url + "/api/tags", headers=h(key)).status_code

    deadline = time.monotonic() + 5
    while status(new_key) != 200:
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.05)
    path.write_text("- name: [broken")
    time.sleep(0.3)
    assert status(new_key) == 200  # the last good keys stay in force
    assert "keys file not reloaded, the previous keys stay in force" in caplog.text


def test_probes_status_and_metrics_are_not_activity(
    recorder: tuple[Recorder, BackgroundServer], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url, env_for(tmp_path))

    def status() -> dict[str, object]:
        answer: dict[str, object] = httpx.get(
            proxy.url + "/ondemand/status", headers=h(ADMIN_KEY)
        ).json()
        return answer

    assert status()["last_request_at"] is None
    httpx.get(proxy.url + "/api/tags", headers=h(OPEN_KEY))
    first = status()
    assert first["requests"] == 1
    time.sleep(0.05)
    httpx.get(proxy.url + "/ping")
    httpx.get(proxy.url + "/metrics", headers=h(ADMIN_KEY))
    httpx.get(proxy.url + "/ondemand/status", headers=h(OPEN_KEY))
    later = status()
    assert (later["requests"], later["last_request_at"]) == (1, first["last_request_at"])
    assert later["idle_seconds"] > first["idle_seconds"]  # type: ignore[operator]
