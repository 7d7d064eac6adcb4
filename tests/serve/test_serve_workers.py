"""`ondemand serve` with ONDEMAND_PROXY_WORKERS=2: the image's server on two processes.

Requests go on fresh connections, so the kernel spreads them over both processes; a rule
only the main process knew (the preloaded models' keep_alive) would fail on the worker.
"""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.serve.conftest import KEY, Serve

FRESH = 24


def _workers(status: dict[str, object]) -> dict[str, object]:
    view = status["workers"]
    assert isinstance(view, dict)
    return view


def test_a_user_key_cannot_unload_a_preloaded_model_through_either_process(
    serve: Serve,
) -> None:
    served = serve(
        "llama3.2", ONDEMAND_PROXY_WORKERS="2", ONDEMAND_ADMIN_KEY="odk_admin_0123456789"
    )
    served.wait_ping(200)
    admin = {"X-API-Key": "odk_admin_0123456789"}
    # A worker still starting holds what its listener got: a generous timeout, not a retry.
    status = httpx.get(served.url + "/ondemand/status", headers=admin, timeout=30).json()
    assert _workers(status)["running"] == 2
    ollama = f"http://127.0.0.1:{served.ollama_port}"
    body = {"model": "llama3.2", "prompt": "hi", "stream": False, "keep_alive": 0}
    user = {"X-API-Key": KEY}
    for _ in range(FRESH):
        with httpx.Client(timeout=30) as client:
            answer = client.post(served.url + "/api/generate", json=body, headers=user)
        assert answer.status_code == 200, answer.text
        loaded = [m["name"] for m in httpx.get(ollama + "/api/ps").json()["models"]]
        assert loaded == ["llama3.2:latest"]
    per_process = _workers(
        httpx.get(served.url + "/ondemand/status", headers=admin, timeout=30).json()
    )
    assert per_process["requests"] is not None
    assert all(n > 0 for n in per_process["requests"]), per_process  # type: ignore[attr-defined]


def test_sigterm_lets_streams_on_every_process_finish(serve: Serve) -> None:
    served = serve("llama3.2", ONDEMAND_PROXY_WORKERS="2", OLLAMA_EMULATOR_TOKENS_PER_SECOND="20",
                   OLLAMA_EMULATOR_RESPONSE_TOKENS="30")  # fmt: skip
    served.wait_ping(200)
    streams: list[list[dict[str, object]]] = [[] for _ in range(6)]
    started = threading.Semaphore(0)

    def chat(lines: list[dict[str, object]]) -> None:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", served.url + "/api/chat", json=body,
                          headers={"X-API-Key": KEY}, timeout=30) as response:  # fmt: skip
            for line in response.iter_lines():
                lines.append(json.loads(line))
                if len(lines) == 1:
                    started.release()

    readers = [threading.Thread(target=chat, args=(lines,)) for lines in streams]
    for reader in readers:
        reader.start()
    for _ in readers:
        assert started.acquire(timeout=10)
    began = time.monotonic()
    assert served.stop() == 0
    for reader in readers:
        reader.join(10)
    for lines in streams:
        assert len(lines) == 31
        assert lines[-1]["done"] is True
    assert time.monotonic() - began < 15
