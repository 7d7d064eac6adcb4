"""`ondemand serve` as the image runs it: honest /ping, preload and warm-up, supervision."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from ondemand.processes import free_port
from tests.serve.conftest import KEY, Serve, Served


def _models(served: Served) -> dict[str, dict[str, object]]:
    models = served.server()["models"]
    assert isinstance(models, list)
    return {str(m["name"]): m for m in models}


def _ollama_pid(served: Served) -> int:
    ollama = served.server()["ollama"]
    assert isinstance(ollama, dict)
    pid = ollama["pid"]
    assert isinstance(pid, int)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ping_is_204_while_models_load_then_200_when_every_model_is_warm(serve: Serve) -> None:
    served = serve(
        "llama3.2,qwen3:0.6b,nomic-embed-text",
        OLLAMA_EMULATOR_PULL_SECONDS="0.6",
        OLLAMA_EMULATOR_LOAD_TIME="0.3",
    )
    served.wait_ping(200)
    assert served.codes()[0] == 204
    assert served.codes()[-1] == 200
    models = _models(served)
    assert {m["phase"] for m in models.values()} == {"warm"}
    assert models["llama3.2"]["cached"] is True  # present in the store: not pulled again
    assert "pull" not in models["llama3.2"]["seconds"]  # type: ignore[operator]
    assert models["qwen3:0.6b"]["cached"] is False
    assert models["nomic-embed-text"]["kind"] == "embedding"
    log = served.log.read_text()
    assert "llama3.2 is in the model cache: not pulled" in log
    assert "pulling qwen3:0.6b" in log
    # Loaded into memory with the keep-alive policy (-1: for the life of the server).
    ps = httpx.get(f"http://127.0.0.1:{served.ollama_port}/api/ps").json()["models"]
    assert sorted(m["name"] for m in ps) == ["llama3.2:latest", "nomic-embed-text:latest",
                                             "qwen3:0.6b"]  # fmt: skip
    assert all(m["expires_at"].startswith("23") for m in ps)


def test_a_model_that_cannot_be_pulled_makes_the_server_unhealthy(serve: Serve) -> None:
    served = serve("llama3.2,no-such-model:7b", OLLAMA_EMULATOR_PULL_FAIL="no-such-model:7b")
    served.wait_ping(503)
    time.sleep(0.3)
    assert served.ping() == 503
    assert 200 not in served.codes()
    models = _models(served)
    assert models["llama3.2"]["phase"] == "warm"
    assert models["no-such-model:7b"]["phase"] == "failed"
    assert "file does not exist" in str(models["no-such-model:7b"]["error"])
    assert served.status()["ready"] is False
    assert "not ready: no-such-model:7b: pull failed" in served.log.read_text()
    # A missing model is not retried: it will not appear on a second try.
    assert served.log.read_text().count("pulling no-such-model:7b\n") == 1


def test_a_pull_that_fails_halfway_is_retried(serve: Serve) -> None:
    fault = [{"path": "/api/pull", "error_after_lines": 2, "error": "unexpected EOF"}]
    served = serve("qwen3:0.6b", OLLAMA_EMULATOR_FAULTS=json.dumps(fault))
    served.wait_ping(200)
    log = served.log.read_text()
    assert "pulling qwen3:0.6b failed (unexpected EOF); try 2 of 3" in log
    assert _models(served)["qwen3:0.6b"]["phase"] == "warm"


def test_a_model_on_the_cpu_is_unhealthy_when_a_gpu_is_required(serve: Serve) -> None:
    served = serve(
        "llama3.2",
        OLLAMA_EMULATOR_CPU_MODELS="llama3.2",
        ONDEMAND_REQUIRE_GPU="1",
        ONDEMAND_GPU="L4",
    )
    served.wait_ping(503)
    model = _models(served)["llama3.2"]
    assert model["on_gpu"] is False
    assert model["size_vram"] == 0
    message = str(model["error"])
    assert "entirely on the CPU" in message
    assert "expects L4" in message
    assert "llama3.2: loaded entirely on the CPU" in served.log.read_text()


def test_without_require_gpu_a_cpu_model_is_served_with_a_warning(serve: Serve) -> None:
    served = serve("llama3.2", OLLAMA_EMULATOR_CPU_MODELS="llama3.2")
    served.wait_ping(200)
    assert _models(served)["llama3.2"]["on_gpu"] is False
    assert "llama3.2 is loaded entirely on the CPU; expected a GPU" in served.log.read_text()


def test_ollama_dying_is_restarted_and_ping_is_503_meanwhile(serve: Serve) -> None:
    served = serve("llama3.2")
    served.wait_ping(200)
    first = _ollama_pid(served)
    os.kill(first, signal.SIGKILL)
    served.wait_ping(503, timeout=5)
    served.wait_ping(200, timeout=20)
    assert served.codes()[-3:] == [200, 503, 200] or served.codes()[-4:-1] == [200, 503, 204]
    second = _ollama_pid(served)
    assert second != first
    ollama = served.server()["ollama"]
    assert isinstance(ollama, dict)
    assert ollama["restarts"] == 1
    assert "Ollama exited with status -9; restarting in 1s" in served.log.read_text()
    # The restarted Ollama had the model re-warmed before /ping said 200 again.
    ps = httpx.get(f"http://127.0.0.1:{served.ollama_port}/api/ps").json()["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest"]


def test_ollama_crashing_during_warm_up_is_restarted_and_warmed_again(serve: Serve) -> None:
    served = serve("llama3.2", OLLAMA_EMULATOR_LOAD_TIME="1.5")
    deadline = time.monotonic() + 10
    while _models(served)["llama3.2"]["phase"] != "loading":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(_ollama_pid(served), signal.SIGKILL)
    served.wait_ping(200, timeout=20)
    assert 503 in served.codes()
    assert _models(served)["llama3.2"]["phase"] == "warm"


def test_sigterm_drains_a_stream_in_flight_and_stops_ollama(serve: Serve) -> None:
    served = serve("llama3.2", OLLAMA_EMULATOR_TOKENS_PER_SECOND="20",
                   OLLAMA_EMULATOR_RESPONSE_TOKENS="30")  # fmt: skip
    served.wait_ping(200)
    ollama = _ollama_pid(served)
    lines: list[dict[str, object]] = []
    first = threading.Event()

    def chat() -> None:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", served.url + "/api/chat", json=body,
                          headers={"X-API-Key": KEY}, timeout=30) as response:  # fmt: skip
            for line in response.iter_lines():
                lines.append(json.loads(line))
                first.set()

    reader = threading.Thread(target=chat)
    reader.start()
    assert first.wait(10)
    started = time.monotonic()
    assert served.stop() == 0
    reader.join(10)
    assert lines[-1]["done"] is True  # the stream finished although SIGTERM came mid-way
    assert len(lines) == 31
    assert time.monotonic() - started < 10
    assert not _alive(ollama)
    assert "stopping: draining in-flight requests" in served.log.read_text()


def test_ollama_gets_no_secrets_and_listens_on_loopback_only(serve: Serve) -> None:
    served = serve("llama3.2", OLLAMA_HOST="0.0.0.0:11434", ONDEMAND_ADMIN_KEY="odk_admin_xyz_1234")
    served.wait_ping(200)
    environ = Path(f"/proc/{_ollama_pid(served)}/environ").read_bytes().split(b"\0")
    names = {item.partition(b"=")[0] for item in environ}
    assert b"AUTHORIZATION_APIKEY" not in names
    assert b"ONDEMAND_ADMIN_KEY" not in names
    assert f"OLLAMA_HOST=127.0.0.1:{served.ollama_port}".encode() in environ
    # Nor the server's listening socket: held by Ollama, the port would go on taking
    # connections nobody answers once the server stops serving it.
    port = int(served.url.rsplit(":", 1)[1])
    listening = _listening_inodes(port)
    assert listening
    fds = Path(f"/proc/{_ollama_pid(served)}/fd")
    held = {str(fd.readlink()) for fd in fds.iterdir()}
    assert not held & {f"socket:[{inode}]" for inode in listening}


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (Linux /proc/net/tcp, state 0A)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def test_ping_on_its_own_port_when_port_health_differs(serve: Serve) -> None:
    health = free_port()
    served = serve("llama3.2", PORT_HEALTH=str(health))
    served.wait_ping(200)
    assert httpx.get(f"http://127.0.0.1:{health}/ping").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{health}/api/tags").status_code == 404


def test_no_models_means_ready_as_soon_as_ollama_answers(serve: Serve) -> None:
    served = serve("")
    served.wait_ping(200, timeout=10)
    assert served.server()["models"] == []


def test_a_request_while_ollama_starts_gets_503_with_retry_after_then_succeeds(
    serve: Serve, tmp_path: Path
) -> None:
    # Ollama starts only once the gate exists: the request meets the server still starting,
    # as one routed by a platform whose probe counts /ping's 204 as healthy does.
    gate = tmp_path / "gate"
    gated = tmp_path / "gated-ollama"
    standin = tmp_path / "bin" / "ollama"
    wait = f'while [ ! -e "{gate}" ]; do sleep 0.02; done'
    gated.write_text(f'#!/bin/sh\n{wait}\nexec "{standin}" "$@"\n')
    gated.chmod(0o755)
    served = serve(OLLAMA_BIN=str(gated))
    assert served.ping() == 204
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    early = httpx.post(served.url + "/api/chat", headers={"X-API-Key": KEY}, json=chat)
    assert early.status_code == 503
    assert early.headers["retry-after"] == "2"
    assert early.json() == {"error": "Ollama is still starting; retry shortly"}
    openai = httpx.post(served.url + "/v1/chat/completions", headers={"X-API-Key": KEY}, json=chat)
    assert openai.status_code == 503
    assert openai.json()["error"]["message"] == "Ollama is still starting; retry shortly"

    gate.touch()
    served.wait_ping(200)
    answer = httpx.post(served.url + "/api/chat", headers={"X-API-Key": KEY}, json=chat)
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OLLAMA_BIN": "/nonexistent/ollama"}, "cannot find Ollama: OLLAMA_BIN=/nonexistent"),
        ({"AUTHORIZATION_APIKEY": ""}, "no API key is configured"),
        ({"PORT_HEALTH": "nope"}, "PORT_HEALTH must be a port number"),
    ],
)
def test_configuration_errors_exit_2_with_a_clear_message(
    serve: Serve, env: dict[str, str], message: str
) -> None:
    served = serve(wait=False, **env)
    assert served.proc.wait(20) == 2
    log = served.log.read_text()
    assert message in log
    assert "Traceback" not in log


def test_a_port_in_use_exits_2(serve: Serve) -> None:
    from ondemand.serving import bind

    holder = bind("127.0.0.1", 0)
    try:
        served = serve(wait=False, PORT=str(holder.getsockname()[1]))
        assert served.proc.wait(20) == 2
        assert "cannot listen on 127.0.0.1" in served.log.read_text()
    finally:
        holder.close()


ADMIN_KEY = "odk_serve_test_admin_0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


def test_models_added_while_it_serves_are_warmed_with_ping_staying_200(serve: Serve) -> None:
    served = serve(
        "llama3.2",
        ONDEMAND_ADMIN_KEY=ADMIN_KEY,
        OLLAMA_EMULATOR_PULL_SECONDS="0.5",
        OLLAMA_EMULATOR_PULL_FAIL="no-such-model:7b",
    )
    served.wait_ping(200)
    answer = httpx.post(
        served.url + "/ondemand/models", headers=ADMIN,
        json={"models": ["llama3.2", "qwen3:0.6b", "no-such-model:7b"]},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    phases = {m["name"]: m["phase"] for m in answer.json()["models"]}
    assert phases["llama3.2"] == "warm"  # already there: untouched
    assert phases["qwen3:0.6b"] in ("pending", "pulling")
    deadline = time.monotonic() + 20
    while {_models(served)[m]["phase"] for m in ("qwen3:0.6b", "no-such-model:7b")} & {
        "pending",
        "pulling",
        "loading",
    }:
        # The models already warm stay in service: the server never stops being ready.
        assert served.ping() == 200
        assert time.monotonic() < deadline, served.log.read_text()[-2000:]
        time.sleep(0.05)
    models = _models(served)
    assert models["qwen3:0.6b"]["phase"] == "warm"
    assert models["no-such-model:7b"]["phase"] == "failed"
    assert "file does not exist" in str(models["no-such-model:7b"]["error"])
    assert served.ping() == 200
    # An Ollama restart preloads what was added, but not what failed to be added, so a bad
    # name given once cannot make the server unhealthy later.
    os.kill(_ollama_pid(served), signal.SIGKILL)
    served.wait_ping(503, timeout=5)
    served.wait_ping(200, timeout=20)
    assert sorted(_models(served)) == ["llama3.2", "qwen3:0.6b"]
