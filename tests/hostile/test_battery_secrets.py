"""No secret leaves the server: not in its stdout or stderr (text and JSON logs, at DEBUG),
in /metrics, in status, in error bodies, in the usage webhook's records, or in the command
lines of the server and of the Ollama it starts.

Every kind of key is used, right and wrong (a wrong key is often the right one with a typo,
so an echoed wrong key is a leaked right one), with every kind of failure.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import serve_emulator
from tests.hostile.conftest import (
    ADMIN_KEY,
    BASIC_PASSWORD,
    BASIC_USER,
    LIMITED_KEY,
    USER_KEY,
    WEBHOOK_KEY,
    Process,
    Served,
    json_post,
    proxy_env,
    raw,
    release_lease,
    request,
    start_proxy_process,
    start_serve_process,
    take_lease,
    upstream_background,
)
from tests.proxy.recorder import Recorder

RUN_KEY_SECRET = "hostile-run-key-secret-1f5c9a2e7b"
STATIC_SECRETS = [USER_KEY, ADMIN_KEY, LIMITED_KEY, BASIC_PASSWORD, WEBHOOK_KEY, RUN_KEY_SECRET]


def secret_env(tmp: Path, webhook_url: str, log_json: bool) -> dict[str, str]:
    return proxy_env(
        tmp,
        AUTHORIZATION_LOG_LEVEL="DEBUG",
        AUTHORIZATION_LOG_JSON="true" if log_json else "false",
        USER_MODEL_METRICS_WEBHOOK_URL=webhook_url + "/usage",
        USER_MODEL_METRICS_WEBHOOK_API_KEY=WEBHOOK_KEY,
        ONDEMAND_WEBHOOK_BATCH_SIZE="1",
        ONDEMAND_RUN_KEY_SECRET=RUN_KEY_SECRET,
    )


def fragments(secret: str) -> list[str]:
    """The secret, its encodings, and a middle part of it (a truncated echo leaks too)."""
    middle = secret[len(secret) // 4 : len(secret) // 4 + 12]
    return [secret, middle, base64.b64encode(secret.encode()).decode()]


@dataclass
class Battery:
    """What a hostile client saw: every response body, and the per-run keys it was given."""

    bodies: list[bytes] = field(default_factory=list)
    run_keys: list[str] = field(default_factory=list)

    def send(self, port: int, data: bytes) -> None:
        self.bodies.append(raw(port, data).body)


def wrong_variants(key: str) -> list[str]:
    return [key + "x", "x" + key, key[:-1], key.upper(), key + " " + key, f"{key},{key}"]


def run_battery(port: int) -> Battery:
    battery = Battery()
    chat = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
    basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    for key in (USER_KEY, ADMIN_KEY, LIMITED_KEY):
        battery.send(port, json_post("/api/chat", chat, key=key))
        battery.send(port, json_post("/v1/chat/completions", chat, key=key))
        for wrong in wrong_variants(key):
            battery.send(port, json_post("/api/chat", chat, key=wrong))
            battery.send(port, json_post("/v1/chat/completions", chat, key=wrong))
            battery.send(port, request("GET", "/api/tags", headers=f"X-API-Key: {wrong}\r\n"))
        # A query string is neither logged nor echoed (a key in the path would be: the
        # path is what the log is for, and no client sends its key there).
        battery.send(port, request("GET", f"/api/tags?key={key}", key=key))
        battery.send(port, request("GET", f"/api/nothing?key={key}", key=key))
        battery.send(port, request("POST", "/api/pull", key=key, body=b"{}"))
        battery.send(port, json_post("/api/chat", b'{"model":"mistral"}', key=key))
        battery.send(port, json_post("/api/chat", b"{not json", key=key))
        battery.send(port, request("GET", "/api/../x", key=key))
        battery.send(port, request("TRACE", "/api/tags", key=key))
    battery.send(port, request("GET", "/api/tags", headers=f"Authorization: Basic {basic}\r\n"))
    wrong_basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}x".encode()).decode()
    battery.send(
        port, request("GET", "/api/tags", headers=f"Authorization: Basic {wrong_basic}\r\n")
    )
    battery.send(port, request("GET", "/api/tags", headers=f"Authorization: {USER_KEY}\r\n"))
    battery.send(port, request("GET", "/api/tags", headers=f"Cookie: k={USER_KEY}\r\n"))
    lease_id, run_key = take_lease(port, models=["llama3.2"])
    battery.run_keys.append(run_key)
    battery.send(port, json_post("/api/chat", chat, key=run_key))
    battery.send(port, json_post("/api/chat", b'{"model":"mistral"}', key=run_key))
    battery.send(port, request("GET", "/ondemand/leases", key=run_key))
    battery.send(port, request("GET", "/ondemand/leases", key=ADMIN_KEY))
    battery.send(port, request("GET", "/ondemand/status", key=ADMIN_KEY))
    battery.send(port, request("GET", "/ondemand/status", key=run_key))
    release_lease(port, lease_id)
    battery.send(port, json_post("/api/chat", chat, key=run_key))
    battery.send(port, json_post("/api/chat", chat, key=run_key + "x"))
    battery.send(port, request("GET", "/metrics", key=ADMIN_KEY))
    return battery


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        for fragment in fragments(secret):
            assert fragment not in text, f"a secret ({fragment[:6]}...) in {where}"


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@dataclass
class Logged:
    server: Process
    webhook: Recorder


@pytest.fixture(scope="module", params=["text", "json"])
def logged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Logged]:
    """``ondemand proxy`` at DEBUG, text or JSON logs, with a usage webhook."""
    tmp = tmp_path_factory.mktemp("secrets")
    webhook = Recorder()
    hook = upstream_background(webhook)
    try:
        for _app, emulator in serve_emulator("llama3.2,mistral"):
            env = secret_env(tmp, hook.url, log_json=request.param == "json")
            server = start_proxy_process(tmp, emulator.url, env)
            yield Logged(server, webhook)
            server.stop()
    finally:
        hook.stop()


def test_no_secret_in_logs_bodies_metrics_webhook_or_command_line(logged: Logged) -> None:
    battery = run_battery(logged.server.port)
    secrets = STATIC_SECRETS + battery.run_keys
    # Only the lease's own answer (taken outside the battery) carries its per-run key.
    for body in battery.bodies:
        assert_no_secret(body.decode(errors="replace"), secrets, "a response body")
    deadline = time.monotonic() + 10
    while not any(seen.path == "/usage" for seen in logged.webhook.seen):
        assert time.monotonic() < deadline, "the usage webhook never received a batch"
        time.sleep(0.05)
    for seen in logged.webhook.seen:
        assert_no_secret(seen.body.decode(errors="replace"), secrets, "a webhook record")
    assert_no_secret(cmdline(logged.server.pid), secrets, "the command line")
    logged.server.stop()  # its last words (shutdown, webhook flush) count too
    output = logged.server.output()
    assert "Traceback" not in output
    assert "apikey" in output
    assert "limited" in output
    assert_no_secret(output, secrets, "the server's output")  # ...and never shows one


@pytest.fixture(scope="module")
def served_debug(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``ondemand serve`` at DEBUG with JSON logs, its Ollama the emulator."""
    tmp = tmp_path_factory.mktemp("serve-secrets")
    env = secret_env(tmp, "http://127.0.0.1:9", log_json=True)
    server = start_serve_process(tmp, env)
    yield server
    server.stop()


def test_serve_shows_no_secret_in_logs_or_in_its_or_ollamas_command_line(
    served_debug: Served,
) -> None:
    battery = run_battery(served_debug.port)
    secrets = STATIC_SECRETS + battery.run_keys
    ollama = served_debug.ollama_pids()
    assert ollama, "serve runs its Ollama as a child"
    for pid in [served_debug.pid, *ollama]:
        assert_no_secret(cmdline(pid), secrets, f"the command line of {pid}")
    metrics = raw(served_debug.port, request("GET", "/metrics", key=ADMIN_KEY))
    assert metrics.status == 200
    assert_no_secret(metrics.body.decode(), secrets, "/metrics")
    status = raw(served_debug.port, request("GET", "/ondemand/status", key=ADMIN_KEY)).json()
    assert_no_secret(json.dumps(status), secrets, "/ondemand/status")
    served_debug.stop()
    output = served_debug.output()
    assert "Traceback" not in output
    assert_no_secret(output, secrets, "serve's output")
