"""Policy under hostile requests, over raw sockets: what a key limited to some models can
reach, what a key that is not admin can do to the preloaded models, and what a broken keys
file prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ondemand.processes import free_port
from ondemand.proxy.auth import sha256_form
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, ProxyFactory
from tests.proxy.rawhttp import RawResponse, raw_request
from tests.proxy.recorder import Recorder
from tests.serve.conftest import (
    KEY,
    Serve,
    serve,  # noqa: F401  (the fixture that starts `ondemand serve`)
)

LIMITED_KEY = "odk_limited_0123456789abcdef"
AUDIO = bytes(range(256)) * 16  # binary, with CR, LF and '-' in it
B = "----form7MA4YWxkTrZu0gW"

# -- item 3: the transcription form ------------------------------------------------------


@pytest.fixture
def limited(
    start_proxy: ProxyFactory, recorder: tuple[Recorder, BackgroundServer], tmp_path: Path
) -> tuple[Recorder, int]:
    """A proxy in front of a recording upstream; LIMITED_KEY may use only llama3.2."""
    keys = tmp_path / "keys.yml"
    keys.write_text(f"- name: ci\n  sha256: {sha256_form(LIMITED_KEY)}\n  models: [llama3.2]\n")
    app, upstream = recorder
    proxy = start_proxy(
        upstream.url, {"ONDEMAND_ADMIN_KEY": ADMIN_KEY, "ONDEMAND_KEYS_FILE": str(keys)}
    )
    return app, proxy.port


def _field(name: str, value: bytes, extra: str = "") -> bytes:
    return (
        f'--{B}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
        + value
        + b"\r\n"
    )


def _file(name: str = "file") -> bytes:
    head = f'--{B}\r\nContent-Disposition: form-data; name="{name}"; filename="a.wav"\r\n'
    return head.encode() + b"Content-Type: audio/wav\r\n\r\n" + AUDIO + b"\r\n"


def _form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{B}--\r\n".encode()


def _post(
    port: int,
    body: bytes,
    *,
    target: str = "/v1/audio/transcriptions",
    content_type: str = f"multipart/form-data; boundary={B}",
    extra: str = "",
    key: str = LIMITED_KEY,
) -> RawResponse:
    head = (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return raw_request(port, head.encode() + body)


def test_a_form_naming_another_model_is_refused_and_an_allowed_one_rewritten(
    limited: tuple[Recorder, int],
) -> None:
    app, port = limited
    response = _post(port, _form(_field("model", b"mistral"), _file()))
    assert response.status == 403
    error = response.json()["error"]  # type: ignore[index]
    assert error["type"] == "permission_error"
    assert "mistral" in error["message"]
    assert app.seen == []
    # The allowed form goes on, written anew: its one model field is the one checked.
    body = _form(_field("model", b"llama3.2"), _field("language", b"en"), _file())
    assert _post(port, body).status == 200
    (seen,) = app.seen
    content_type = (seen.header(b"content-type") or b"").decode()
    boundary = content_type.split("boundary=", 1)[1]
    assert boundary != B
    parts = seen.body.split(f"--{boundary}".encode())
    assert parts[0] == b""
    assert parts[-1] == b"--\r\n"
    assert sum(b'name="model"' in p for p in parts) == 1
    assert b'name="model"\r\n\r\nllama3.2\r\n' in seen.body
    assert b'name="language"\r\n\r\nen\r\n' in seen.body
    assert b"\r\n\r\n" + AUDIO + b"\r\n" in seen.body


_LIE = "multipart/form-data; boundary=another-boundary"
_ROUTE = "/v1/audio/transcriptions"
_OK, _NO, _FILE = _field("model", b"llama3.2"), _field("model", b"mistral"), _file()
_QP = b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=6D"
_HOSTILE_FORMS: dict[str, tuple[bytes, dict[str, str]]] = {
    "two model fields": (_form(_OK, _NO, _FILE), {}),
    "model in another case": (_form(_field("Model", b"mistral"), _OK, _FILE), {}),
    "model in the query": (_form(_OK, _FILE), {"target": _ROUTE + "?model=mistral"}),
    "only the query names it": (_form(_FILE), {"target": _ROUTE + "?%6Dodel=mistral"}),
    "RFC 2231 name": (_form(_NO.replace(b'name="model"', b"name*=UTF-8''model"), _OK, _FILE), {}),
    "quoted-printable model": (
        _form(_field("model", b"=6Distral").replace(b"\r\n\r\n=6D", _QP, 1), _FILE),
        {},
    ),
    "boundary that lies": (_form(_NO, _FILE), {"content_type": _LIE}),
    "bare LF line ends": (_form(_NO, _FILE).replace(b"\r\n", b"\n"), {}),
    "blank after a boundary": (
        _form(_OK, _FILE).replace(f"--{B}\r\n".encode(), f"--{B} \r\n".encode(), 1),
        {},
    ),
    "model as a file": (_form(_field("model", b"mistral", '; filename="m"'), _FILE), {}),
    "urlencoded": (b"model=mistral&file=x", {"content_type": "application/x-www-form-urlencoded"}),
    "two content types": (
        _form(_OK, _FILE),
        {"extra": f"Content-Type: multipart/form-data; boundary=x{B}\r\n"},
    ),
    "no closing boundary": (_NO + _FILE, {}),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE_FORMS))
def test_forms_that_cannot_be_read_without_doubt_are_refused(
    limited: tuple[Recorder, int], case: str
) -> None:
    app, port = limited
    body, options = _HOSTILE_FORMS[case]
    response = _post(port, body, **options)
    assert response.status in (400, 403), response.body
    assert "error" in response.json()  # type: ignore[operator]
    assert app.seen == [], f"{case}: forwarded"


# -- item 4: keep_alive from keys that are not admin ----------------------------------------


def _ps(port: int) -> dict[str, bool]:
    """What Ollama holds, asked directly (loopback): model -> held for good (``-1``)."""
    models = httpx.get(f"http://127.0.0.1:{port}/api/ps", timeout=5).json()["models"]
    return {m["model"]: int(m["expires_at"][:4]) > 2200 for m in models}


def _send(port: int, path: str, body: dict[str, object], key: str) -> RawResponse:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return raw_request(port, head.encode() + data, timeout=10)


_UNLOADS: list[tuple[str, dict[str, object]]] = [
    ("/api/generate", {"model": "llama3.2", "keep_alive": 0}),
    ("/api/generate", {"model": "LLAMA3.2:latest", "keep_alive": "0s"}),
    ("/api/generate", {"model": "llama3.2", "KEEP_ALIVE": "1ns"}),
    ("/api/generate", {"model": "llama3.2", "\u212aeep_alive": 0.0}),
    ("/api/chat", {"model": "llama3.2", "messages": [], "keep_alive": "0m"}),
    ("/api/generate", {"model": "llama3.2", "keep_alive": "-1", "Keep_Alive": 0}),
    ("/api/embed", {"model": "nomic-embed-text", "keep_alive": 0}),
    ("/api/embeddings", {"model": "nomic-embed-text", "prompt": "", "keep_alive": "0s"}),
]


def test_keys_that_are_not_admin_cannot_unload_the_preloaded_models(
    serve: Serve,  # noqa: F811
) -> None:
    served = serve(
        "llama3.2,nomic-embed-text",
        ONDEMAND_ADMIN_KEY=ADMIN_KEY,
        ONDEMAND_RESIDENCY_INTERVAL="0.1",
    )
    served.wait_ping(200)
    port = int(served.url.rsplit(":", 1)[1])
    lease = httpx.post(
        served.url + "/ondemand/leases",
        json={"holder": "run-1", "ttl_seconds": 600, "key": True},
        headers={"X-API-Key": ADMIN_KEY},
    )
    assert lease.status_code == 201, lease.text
    run_key = lease.json()["key"]
    before = _ps(served.ollama_port)
    assert before == {"llama3.2:latest": True, "nomic-embed-text:latest": True}
    for key in (KEY, run_key):
        for path, body in _UNLOADS:
            response = _send(port, path, body, key)
            assert response.status < 500, response.body
            assert _ps(served.ollama_port) == before, f"{path} {body} unloaded a model"
    assert served.ping() == 200


def test_ping_tells_when_a_preloaded_model_is_gone_and_loads_it_again(
    serve: Serve,  # noqa: F811
) -> None:
    served = serve(
        "llama3.2",
        ONDEMAND_ADMIN_KEY=ADMIN_KEY,
        ONDEMAND_RESIDENCY_INTERVAL="0.05",
        OLLAMA_EMULATOR_LOAD_TIME="0.6",
    )
    served.wait_ping(200)
    port = int(served.url.rsplit(":", 1)[1])
    # An admin key may unload it: the server notices and loads it again.
    unload = {"model": "llama3.2", "keep_alive": 0}
    assert _send(port, "/api/generate", unload, ADMIN_KEY).status == 200
    served.wait_ping(204, timeout=10)
    assert served.server()["phase"] == "rewarming"
    served.wait_ping(200, timeout=10)
    assert "llama3.2:latest" in _ps(served.ollama_port)
    # Evicted behind the proxy's back (Ollama itself): the same.
    httpx.post(
        f"http://127.0.0.1:{served.ollama_port}/api/generate",
        json={"model": "llama3.2", "keep_alive": 0},
        timeout=5,
    )
    served.wait_ping(204, timeout=10)
    served.wait_ping(200, timeout=10)
    models = served.server()["models"]
    assert isinstance(models, list)
    assert models[0]["phase"] == "warm"
    assert "no longer loaded" in served.log.read_text()


# -- item 5: a broken keys file -----------------------------------------------------------

SECRET = "odk_SECRET_do_not_print_0123456789"
_BROKEN = {
    "duplicate field": f"- name: ci\n  key: {SECRET}\n  key: {SECRET}x\n",
    "unclosed quote": f'- name: ci\n  key: "{SECRET}\n',
    "colon in a plain value": f"- name: ci\n  key: {SECRET}: x\n",
    "undefined alias": f"- name: ci\n  key: *{SECRET}\n",
    "tab": f"- name: ci\n\tkey: {SECRET}\n",
    "key pasted as a field": f"- name: ci\n  key: k-{SECRET}\n  {SECRET}: 1\n",
    "not UTF-8": f"- name: ci\n  key: {SECRET}\xff\n",
}


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def _proxy_env(keys: Path, json_logs: bool) -> dict[str, str]:
    ours = ("AUTHORIZATION_", "ONDEMAND_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {
        **base,
        "ONDEMAND_KEYS_FILE": str(keys),
        "AUTHORIZATION_LOG_JSON": "1" if json_logs else "",
    }


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())


@pytest.mark.parametrize("json_logs", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_a_broken_keys_file_at_start_names_the_place_not_the_text(
    tmp_path: Path, case: str, json_logs: bool
) -> None:
    keys = tmp_path / "keys.yml"
    _write(keys, _BROKEN[case])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ondemand",
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--port",
            "0",
        ],
        env=_proxy_env(keys, json_logs),
        capture_output=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert SECRET not in output
    assert "SECRET" not in output
    assert f"{keys}:" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("json_logs", [False, True], ids=["text", "json"])
def test_a_broken_keys_file_at_reload_names_the_place_not_the_text(
    tmp_path: Path, json_logs: bool, proxy_process: list[subprocess.Popen[bytes]]
) -> None:
    keys = tmp_path / "keys.yml"
    keys.write_text(f"- name: ci\n  key: {SECRET}\n")
    log = tmp_path / "proxy.log"
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ondemand", "proxy", "--upstream", "http://127.0.0.1:9",
             "--host", "127.0.0.1", "--port", str(port)],
            env=_proxy_env(keys, json_logs),
            stdout=out,
            stderr=out,
        )  # fmt: skip
    proxy_process.append(proc)
    _wait(lambda: _listening(port), log)
    for number, case in enumerate(sorted(_BROKEN), start=1):
        _write(keys, _BROKEN[case])
        proc.send_signal(signal.SIGHUP)
        _wait(lambda n=number: log.read_text(errors="replace").count("not reloaded") >= n, log)
    text = log.read_text(errors="replace")
    assert "SECRET" not in text
    assert f"{keys}:3:3:" in text  # file, line and column
    if json_logs:
        lines = [json.loads(line) for line in text.splitlines() if "not reloaded" in line]
        assert len(lines) == len(_BROKEN)


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _wait(condition: object, log: Path, timeout: float = 20) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.02)
