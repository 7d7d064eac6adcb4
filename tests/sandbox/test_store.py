"""The model store: pull progress, tags, copy, delete, persistence under OLLAMA_MODELS, and
several emulators sharing one store (an app's replicas)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx

from ondemand.sandbox.ollama import Emulator, EmulatorConfig
from ondemand.sandbox.ollama.config import ModelSpec
from ondemand.sandbox.ollama.store import ModelStore
from tests.sandbox.conftest import Serve, fast_config

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def pull_lines(url: str, model: str, **extra: Any) -> list[dict[str, Any]]:
    r = httpx.post(url + "/api/pull", json={"model": model, **extra})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in r.text.splitlines()]


def test_pull_progress_sequence(serve: Serve) -> None:
    _, url = serve(pull_seconds=0.3)
    lines = pull_lines(url, "qwen3:0.6b")
    assert lines[0] == {"status": "pulling manifest"}
    assert [line["status"] for line in lines[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layers: dict[str, list[dict[str, Any]]] = {}
    for line in lines[1:-3]:
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert line["digest"].startswith("sha256:")
        assert HEX64.match(line["digest"][7:])
        layers.setdefault(line["digest"], []).append(line)
    assert len(layers) == 5  # model, template, license, params, config
    big = max(layers.values(), key=len)
    assert "completed" not in big[0]
    done = [line["completed"] for line in big[1:]]
    assert done == sorted(done)
    assert done[-1] == big[0]["total"]
    assert len(big) >= 4  # progress every ~60 ms over most of 0.3 s
    for progress in layers.values():
        assert progress[-1]["completed"] == progress[-1]["total"]


def test_pulled_model_is_listed_and_a_second_pull_is_cached(serve: Serve) -> None:
    _, url = serve()
    assert httpx.post(
        url + "/api/pull", json={"model": "mxbai-embed-large", "stream": False}
    ).json() == {"status": "success"}
    tags = httpx.get(url + "/api/tags").json()["models"]
    assert tags[0]["name"] == "mxbai-embed-large:latest"
    assert tags[0]["details"]["family"] == "bert"
    assert (
        httpx.post(
            url + "/api/embed", json={"model": "mxbai-embed-large", "input": "x"}
        ).status_code
        == 200
    )
    again = pull_lines(url, "mxbai-embed-large")
    layer_lines = again[1:-3]
    assert all(line["completed"] == line["total"] for line in layer_lines)
    assert len({line["digest"] for line in layer_lines}) == len(layer_lines)


def test_failing_pull_streams_then_errors(serve: Serve) -> None:
    app, url = serve(pull_fail=["ghost"])
    assert pull_lines(url, "ghost:latest") == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    r = httpx.post(url + "/api/pull", json={"model": "ghost", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": "pull model manifest: file does not exist"})
    assert httpx.post(url + "/api/pull", json={"model": "a/b/c/d"}).json() == {
        "error": "invalid model name"
    }
    assert "ghost:latest" not in [m.name for m in app.state.store.models()]


def test_tags_shape_sort_and_case_insensitive_lookup(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    models = httpx.get(url + "/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:latest", "nomic-embed-text:latest"]
    for m in models:
        assert list(m) == ["name", "model", "modified_at", "size", "digest", "details"]
        assert m["name"] == m["model"]
        assert HEX64.match(m["digest"])
        assert list(m["details"]) == [
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        ]
    assert models[0]["modified_at"] > models[1]["modified_at"]
    shown = httpx.post(url + "/api/show", json={"model": "LLAMA3.2"})
    assert shown.status_code == 200
    assert httpx.head(url + "/api/tags").status_code == 200


def test_copy_keeps_digest_and_delete_needs_a_body(emulator: tuple[Emulator, str]) -> None:
    _, url = emulator
    r = httpx.post(url + "/api/copy", json={"source": "llama3.2", "destination": "me/mine:v1"})
    assert (r.status_code, r.content) == (200, b"")
    by_name = {m["name"]: m for m in httpx.get(url + "/api/tags").json()["models"]}
    assert by_name["me/mine:v1"]["digest"] == by_name["llama3.2:latest"]["digest"]
    listed = httpx.get(url + "/v1/models").json()["data"][0]
    assert (listed["id"], listed["object"], listed["owned_by"]) == ("me/mine:v1", "model", "me")
    gone = httpx.request("DELETE", url + "/api/delete", json={"model": "me/mine:v1"})
    assert (gone.status_code, gone.content) == (200, b"")
    again = httpx.request("DELETE", url + "/api/delete", json={"model": "me/mine:v1"})
    assert again.json() == {"error": "model 'me/mine:v1' not found"}
    assert httpx.request("DELETE", url + "/api/delete").json() == {"error": "missing request body"}


def test_models_persist_under_ollama_models(tmp_path: Path, serve: Serve) -> None:
    config = EmulatorConfig.from_env(
        {"OLLAMA_MODELS": str(tmp_path), "OLLAMA_EMULATOR_MODELS": "llama3.2"}
    )
    config.pull_seconds = 0.0
    _, url = serve(config)
    manifest = tmp_path / "manifests/registry.ollama.ai/library/llama3.2/latest"
    assert json.loads(manifest.read_bytes())["schemaVersion"] == 2
    assert pull_lines(url, "bartowski/tiny:q4")[-1] == {"status": "success"}
    assert (tmp_path / "manifests/registry.ollama.ai/bartowski/tiny/q4").is_file()
    before = {m["name"]: m for m in httpx.get(url + "/api/tags").json()["models"]}
    httpx.request("DELETE", url + "/api/delete", json={"model": "llama3.2"})
    assert not manifest.exists()

    restarted = fast_config(models={}, models_dir=tmp_path)
    _, url2 = serve(restarted)
    after = {m["name"]: m for m in httpx.get(url2 + "/api/tags").json()["models"]}
    assert list(after) == ["bartowski/tiny:q4"]
    assert after["bartowski/tiny:q4"] == before["bartowski/tiny:q4"]


def test_replicas_sharing_a_store_never_read_half_a_model(tmp_path: Path) -> None:
    """Replicas share the app's model store: while one writes a manifest (a pull), another
    starting up must find the model whole, never a file half written."""
    name = "llama3.2:latest"
    writers = [
        ModelStore(EmulatorConfig(models={name: ModelSpec(size=100_000)}, models_dir=tmp_path))
        for _ in range(2)
    ]
    stop = threading.Event()

    def write(store: ModelStore, base: int) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            store.config.models[name].size = base + turn % 2  # a new manifest every time
            store.sync_disk()

    threads = [
        threading.Thread(target=write, args=(store, 100_000 + 10 * i))
        for i, store in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    misses = reads = 0
    try:
        while reads < 300:
            fresh = ModelStore(EmulatorConfig(models={}, models_dir=tmp_path))
            reads += 1
            misses += fresh.find(name) is None
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert misses == 0, f"{misses} of {reads} fresh stores missed the model"
    manifests = tmp_path / "manifests"
    assert [p.name for p in manifests.rglob("*") if p.is_file()] == ["latest"]
