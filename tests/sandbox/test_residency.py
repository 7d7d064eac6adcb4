"""keep_alive, loads, unloads and /api/ps, as warm-up scripts and proxies rely on them."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest

from ondemand.sandbox.ollama import Emulator
from tests.sandbox.conftest import Serve


def ps(url: str) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = httpx.get(url + "/api/ps").json()["models"]
    return models


def seconds_left(entry: dict[str, Any]) -> float:
    expires = dt.datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00")[:26] + "+00:00")
    return (expires - dt.datetime.now(dt.UTC)).total_seconds()


def load(url: str, model: str = "llama3.2", **extra: object) -> dict[str, Any]:
    r = httpx.post(url + "/api/generate", json={"model": model, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_load_only_and_unload(emulator: tuple[Emulator, str]) -> None:
    app, url = emulator
    loaded = load(url)
    assert loaded == {
        "model": "llama3.2",
        "created_at": loaded["created_at"],
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    assert [m["name"] for m in ps(url)] == ["llama3.2:latest"]
    assert load(url, keep_alive=0)["done_reason"] == "unload"
    assert ps(url) == []
    chat = httpx.post(url + "/api/chat", json={"model": "llama3.2"}).json()
    assert chat["done_reason"] == "load"
    assert chat["message"] == {"role": "assistant", "content": ""}
    unload = httpx.post(url + "/api/chat", json={"model": "llama3.2", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"
    assert ps(url) == []
    assert (app.stats.loads, app.stats.unloads) == (2, 2)


def test_embedding_models_warm_with_empty_embed_and_refuse_generate(
    emulator: tuple[Emulator, str],
) -> None:
    _, url = emulator
    r = httpx.post(url + "/api/embed", json={"model": "nomic-embed-text", "keep_alive": -1})
    assert r.json() == {"model": "nomic-embed-text", "embeddings": []}
    assert [m["name"] for m in ps(url)] == ["nomic-embed-text:latest"]
    assert httpx.post(url + "/api/generate", json={"model": "nomic-embed-text"}).status_code == 400
    # ollama stop sends keep_alive 0 to /api/generate, which works for embedding models too.
    assert load(url, "nomic-embed-text", keep_alive=0)["done_reason"] == "unload"
    assert ps(url) == []


@pytest.mark.parametrize(
    ("keep_alive", "low", "high"),
    [
        (-1, 290 * 365 * 86400, 293 * 365 * 86400),
        ("-1m", 290 * 365 * 86400, 293 * 365 * 86400),
        ("10m", 590, 600),
        (30, 28, 30),
        (1.5, 0.5, 1.5),
        ("1h30m", 5390, 5400),
        (None, 290, 300),
    ],
)
def test_keep_alive_sets_expires_at(
    emulator: tuple[Emulator, str], keep_alive: object, low: float, high: float
) -> None:
    _, url = emulator
    if keep_alive is None:
        load(url)
    else:
        load(url, keep_alive=keep_alive)
    (entry,) = ps(url)
    assert low <= seconds_left(entry) <= high
    if isinstance(keep_alive, int) and keep_alive < 0:
        assert entry["expires_at"].startswith(("2318", "2319"))


@pytest.mark.parametrize("bad", ["-1", "300", "5 m", "1d"])
def test_unitless_or_unknown_keep_alive_strings_are_400(
    emulator: tuple[Emulator, str], bad: str
) -> None:
    _, url = emulator
    r = httpx.post(url + "/api/generate", json={"model": "llama3.2", "keep_alive": bad})
    assert r.status_code == 400
    assert r.json()["error"].startswith("time: ")
    assert ps(url) == []


def test_string_zero_is_go_duration_zero(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    load(url, keep_alive=-1)
    # time.ParseDuration accepts a bare "0", so this is an unload, not a 400.
    assert load(url, keep_alive="0")["done_reason"] == "unload"


def test_default_keep_alive_applies_only_at_first_load(serve: Serve) -> None:
    _, url = serve(keep_alive="2m")
    load(url, keep_alive=-1)
    prompt = {"model": "llama3.2", "prompt": "hi", "stream": False}
    httpx.post(url + "/api/generate", json=prompt)
    assert seconds_left(ps(url)[0]) > 365 * 86400
    httpx.post(url + "/api/generate", json={**prompt, "keep_alive": "5m"})
    assert 290 <= seconds_left(ps(url)[0]) <= 300
    load(url, keep_alive=0)
    load(url)
    assert 110 <= seconds_left(ps(url)[0]) <= 120


def test_models_expire_from_ps(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    load(url, keep_alive="150ms")
    assert len(ps(url)) == 1
    time.sleep(0.25)
    assert ps(url) == []


def test_keep_alive_zero_with_a_prompt_unloads_after_answering(
    emulator: tuple[Emulator, str],
) -> None:
    _, url = emulator
    body = {"model": "llama3.2", "prompt": "hi", "keep_alive": 0, "stream": False}
    assert httpx.post(url + "/api/generate", json=body).json()["done_reason"] == "stop"
    assert ps(url) == []


def test_ps_sorts_by_time_left_and_reports_cpu_models(serve: Serve) -> None:
    _, url = serve(cpu_models=["nomic-embed-text"])
    load(url, keep_alive="1m")
    httpx.post(url + "/api/embed", json={"model": "nomic-embed-text", "keep_alive": "1h"})
    first, second = ps(url)
    assert (first["name"], second["name"]) == ("nomic-embed-text:latest", "llama3.2:latest")
    assert first["size_vram"] == 0
    assert second["size_vram"] == second["size"] > 0
    assert list(second) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert second["context_length"] == 4096
    assert len(second["digest"]) == 64


def test_load_time_and_num_ctx_reload(serve: Serve) -> None:
    app, url = serve(load_time=0.2)
    started = time.monotonic()
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    cold = httpx.post(url + "/api/generate", json=body).json()
    assert time.monotonic() - started >= 0.2
    assert cold["load_duration"] >= 200_000_000
    warm = httpx.post(url + "/api/generate", json=body).json()
    assert warm["load_duration"] < 50_000_000
    options = {**body, "options": {"num_ctx": 8192}}
    assert httpx.post(url + "/api/generate", json=options).json()["load_duration"] >= 200_000_000
    assert ps(url)[0]["context_length"] == 8192
    assert app.stats.loads == 2
