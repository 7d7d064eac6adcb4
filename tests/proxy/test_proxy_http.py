"""The proxy over real loopback HTTP, in front of an upstream that records what it received."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from ondemand.asgi import Message
from ondemand.processes import free_port
from ondemand.proxy import ProxyApp, ProxySettings
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, KEY_ENV, USER_KEY, ProxyFactory
from tests.proxy.rawhttp import get, raw_request, read_response
from tests.proxy.recorder import Recorder

Upstream = tuple[Recorder, BackgroundServer]
USER = {"Authorization": f"Bearer {USER_KEY}"}
ADMIN = {"X-API-Key": ADMIN_KEY}


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {USER_KEY}"},
        {"Authorization": f"bearer   {USER_KEY}"},
        {"X-API-Key": USER_KEY},
        _basic("anyone", USER_KEY),
        # RunPod's gateway owns Authorization; our key then travels in X-API-Key.
        {"Authorization": "Bearer rpa_runpod_gateway_key", "X-API-Key": USER_KEY},
    ],
    ids=["bearer", "bearer-case", "x-api-key", "basic-password", "x-api-key-wins"],
)
def test_each_accepted_credential_form_reaches_ollama(
    recorder: Upstream, start_proxy: ProxyFactory, headers: dict[str, str]
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    response = httpx.get(proxy.url + "/api/tags", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "path": "/api/tags"}
    assert [s.path for s in app.seen] == ["/api/tags"]


def test_basic_auth_user_and_password_from_env(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url, {"ONDEMAND_BASIC_AUTH": "alice:correct-horse"})
    assert httpx.get(proxy.url + "/api/tags", headers=_basic("alice", "correct-horse")).is_success
    assert httpx.get(proxy.url + "/api/tags", headers=_basic("alice", "wrong")).status_code == 401
    assert (
        httpx.get(proxy.url + "/api/tags", headers=_basic("bob", "correct-horse")).status_code
        == 401
    )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": f"Bearer {USER_KEY}x"}, "invalid API key"),
        ({"Authorization": "Bearer"}, "malformed credentials"),
        ({"Authorization": "Token abc"}, "malformed credentials"),
        ({"Authorization": "Basic %%%not-base64"}, "malformed credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "malformed"),
        ({"Authorization": "Bearer " + "k" * 5000}, "malformed credentials"),
        ({"X-API-Key": ""}, "malformed credentials"),
        ({"X-API-Key": USER_KEY[:-1]}, "invalid API key"),
    ],
    ids=[
        "none",
        "wrong",
        "empty-bearer",
        "scheme",
        "bad-b64",
        "no-colon",
        "huge",
        "empty",
        "short",
    ],
)
def test_refused_credentials_get_401_json_and_never_reach_ollama(
    recorder: Upstream, start_proxy: ProxyFactory, headers: dict[str, str], message: str
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    response = httpx.post(proxy.url + "/api/chat", headers=headers, json={"model": "m"})
    assert response.status_code == 401
    assert message in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert app.seen == []


def test_garbled_header_bytes_are_refused_and_the_proxy_keeps_serving(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    request = get(proxy.port, "/api/tags", "Authorization: Bearer \xff\xfe\r\n")
    garbled = raw_request(proxy.port, request.decode().encode("latin-1"))
    assert garbled.status == 401
    assert httpx.get(proxy.url + "/api/tags", headers=USER).status_code == 200


def test_openai_routes_answer_auth_errors_in_openai_shape(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    body = httpx.post(proxy.url + "/v1/chat/completions", json={}).json()
    assert body["error"]["code"] == "invalid_api_key"
    assert "missing API key" in body["error"]["message"]


def test_keys_and_hop_by_hop_headers_are_not_forwarded(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    headers = {
        **USER,
        "X-API-Key": USER_KEY,
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "drop me",
        "Proxy-Authorization": "Basic eDp5",
        "Origin": "https://evil.example",
        "Cookie": "session=1",
        "X-Custom": "kept",
    }
    assert httpx.get(proxy.url + "/api/version?verbose=1", headers=headers).status_code == 200
    seen = app.seen[0]
    names = {k for k, _ in seen.headers}
    for dropped in (b"authorization", b"x-api-key", b"x-secret-hop", b"proxy-authorization",
                    b"origin", b"cookie"):  # fmt: skip
        assert dropped not in names
    assert seen.header(b"x-custom") == b"kept"
    assert seen.header(b"host") == f"127.0.0.1:{upstream.port}".encode()
    assert seen.query == b"verbose=1"
    assert USER_KEY.encode() not in repr(seen.headers).encode()


def test_no_key_configured_refuses_to_start_and_insecure_mode_is_explicit(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    from ondemand.errors import ConfigError

    _, upstream = recorder
    with pytest.raises(ConfigError, match="no API key is configured"):
        start_proxy(upstream.url, {"AUTHORIZATION_APIKEY": ""})
    open_proxy = start_proxy(upstream.url, {"ONDEMAND_INSECURE_NO_AUTH": "1"})
    assert httpx.post(open_proxy.url + "/api/pull", json={"model": "m"}).status_code == 200


# -- routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:" + "a" * 64),
        ("HEAD", "/api/blobs/sha256:" + "a" * 64),
        ("POST", "/api/%70ull"),
        ("POST", "/api/pul%6C?insecure=true"),
        ("POST", "/api/experimental/web_search"),
    ],
)
def test_admin_routes_refuse_user_keys_and_never_reach_ollama(
    recorder: Upstream, start_proxy: ProxyFactory, method: str, path: str
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    response = raw_request(proxy.port, get(proxy.port, path, f"X-API-Key: {USER_KEY}\r\n", method))
    assert response.status == 403
    if method != "HEAD":
        assert "needs an admin key" in json.loads(response.body)["error"]
    assert app.seen == []


@pytest.mark.parametrize(
    "path",
    ["//api/pull", "/api/./pull", "/api/../api/pull", "/api/%2e%2e/api/pull", "/api/%2fpull",
     "/v1/../api/pull", "/api/pull/..", "/api\\pull", "/api/%00pull"],
)  # fmt: skip
def test_path_tricks_are_rejected_even_with_an_admin_key(
    recorder: Upstream, start_proxy: ProxyFactory, path: str
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    for key in (USER_KEY, ADMIN_KEY):
        response = raw_request(proxy.port, get(proxy.port, path, f"X-API-Key: {key}\r\n", "POST"))
        assert response.status == 400, path
        assert "malformed request path" in str(json.loads(response.body)["error"])
    assert app.seen == []


def test_admin_key_reaches_admin_routes_with_the_canonical_path(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    request = get(proxy.port, "/api/%70ull", f"X-API-Key: {ADMIN_KEY}\r\n", "POST", b"{}")
    response = raw_request(proxy.port, request)
    assert response.status == 200
    assert app.seen[0].raw_path == b"/api/pull"


def test_model_names_with_slashes_pass_encoded_in_v1_models(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    path = "/v1/models/hf.co%2Forg%2Frepo:Q4_K_M"
    response = raw_request(proxy.port, get(proxy.port, path, f"X-API-Key: {USER_KEY}\r\n"))
    assert response.status == 200
    assert app.seen[0].raw_path == b"/v1/models/hf.co%2Forg%2Frepo:Q4_K_M"


@pytest.mark.parametrize("path", ["/api/unknown", "/metrics2", "/API/tags", "/v1", "/v2/models",
                                  "/_emulator/stats", "/api/tags/extra"])  # fmt: skip
def test_unknown_routes_are_404_json_and_not_forwarded(
    recorder: Upstream, start_proxy: ProxyFactory, path: str
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    response = httpx.get(proxy.url + path, headers=ADMIN)
    assert response.status_code == 404
    assert "no such route" in str(response.json()["error"])
    assert app.seen == []


# -- bodies -----------------------------------------------------------------------------


def test_delete_bodies_are_forwarded(recorder: Upstream, start_proxy: ProxyFactory) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    body = b'{"model":"llama3.2"}'
    response = httpx.request("DELETE", proxy.url + "/api/delete", headers=ADMIN, content=body)
    assert response.status_code == 200
    assert (app.seen[0].method, app.seen[0].body) == ("DELETE", body)


def test_non_json_body_is_forwarded_untouched(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    httpx.post(proxy.url + "/api/chat", headers=USER, content=b"not json {")
    assert app.seen[0].body == b"not json {"


def test_oversized_bodies_get_413_declared_or_chunked(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url, {**KEY_ENV, "ONDEMAND_MAX_BODY": "1KiB"})
    declared = httpx.post(proxy.url + "/api/chat", headers=USER, content=b"x" * 1025)
    assert declared.status_code == 413
    assert "larger than the limit of 1024 bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 200

    chunked = httpx.post(proxy.url + "/v1/chat/completions", headers=USER, content=chunks())
    assert chunked.status_code == 413
    assert chunked.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(proxy.url + "/api/chat", headers=USER, content=b"x" * 1024).status_code == 200
    assert len(app.seen) == 1


def test_a_client_stalling_mid_body_gets_408_and_others_are_served(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url, {**KEY_ENV, "ONDEMAND_BODY_TIMEOUT": "0.3"})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as stalled:
        head = get(proxy.port, "/api/chat", f"X-API-Key: {USER_KEY}\r\n", "POST", b"")
        stalled.sendall(head.replace(b"Content-Length: 0", b"Content-Length: 100") + b'{"model":')
        assert httpx.get(proxy.url + "/api/tags", headers=USER).status_code == 200
        answer = read_response(stalled)
    assert answer.status == 408
    assert b"timed out reading the request body" in answer.body
    assert [s.path for s in app.seen] == ["/api/tags"]


def test_invalid_content_length_is_a_clear_400(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    request = (f"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-API-Key: {USER_KEY}\r\n"
               "Content-Length: 12abc\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    response = raw_request(proxy.port, request)
    assert response.status == 400


# -- streaming and failures ------------------------------------------------------------


def test_each_stream_line_reaches_the_client_before_the_next_is_written(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    arrivals: list[float] = []
    with httpx.stream("POST", proxy.url + "/api/chat?n=5&gap=0.15", headers=USER, json={}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["x-accel-buffering"] == "no"
        for line in r.iter_lines():
            arrivals.append(time.monotonic())
            assert json.loads(line)["i"] == len(arrivals) - 1
    assert len(arrivals) == 5
    lags = [arrived - sent for arrived, sent in zip(arrivals, app.sent_at, strict=True)]
    # Below the 150 ms between lines: no line waited for the next one.
    assert max(lags) < 0.14


def test_sse_events_stream_through(recorder: Upstream, start_proxy: ProxyFactory) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions?n=3", headers=USER, json={}) as r:
        text = r.read().decode()
    assert text == "".join(
        f'data: {{"i": {i}, "done": {str(i == 2).lower()}}}\n\n' for i in range(3)
    )


def test_client_disconnect_cancels_the_upstream_request(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    with httpx.stream("POST", proxy.url + "/api/chat?n=200&gap=0.02", headers=USER, json={}) as r:
        lines = r.iter_lines()
        next(lines), next(lines)
        closed_at = time.monotonic()
    deadline = time.monotonic() + 2
    while not app.disconnects and time.monotonic() < deadline:
        time.sleep(0.005)
    assert app.disconnects, "the upstream never saw the disconnect"
    assert app.disconnects[0] - closed_at < 0.5
    assert len(app.sent_at) < 100
    status = httpx.get(proxy.url + "/ondemand/status", headers=USER).json()
    assert status["inflight"] == 0


def test_a_disconnect_cancels_the_upstream_request_under_any_asgi_server(
    recorder: Upstream,
) -> None:
    """Without the front door's disconnect callback (another ASGI server), the proxy
    learns of the disconnect from receive(), and still stops the generation."""
    app, upstream = recorder
    proxy = ProxyApp(ProxySettings.from_env(dict(KEY_ENV), upstream=upstream.url))
    lines: list[bytes] = []

    async def run() -> None:
        gone = asyncio.Event()
        body = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> Message:
            if body:
                return body.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message.get("body"):
                lines.append(message["body"])
                if len(lines) == 2:
                    gone.set()

        scope = {
            "type": "http", "method": "POST", "path": "/api/chat",
            "raw_path": b"/api/chat", "query_string": b"n=200&gap=0.02",
            "headers": [(b"authorization", f"Bearer {USER_KEY}".encode())],
        }  # fmt: skip
        try:
            await asyncio.wait_for(proxy(scope, receive, send), 5)
        finally:
            await proxy.shutdown()

    asyncio.run(run())
    deadline = time.monotonic() + 2
    while not app.disconnects and time.monotonic() < deadline:
        time.sleep(0.005)
    assert app.disconnects, "the upstream never saw the disconnect"
    assert len(lines) == 2
    assert len(app.sent_at) < 100
    assert proxy.limits.inflight == 0


NATIVE_TAIL = b'{"error":"upstream Ollama closed the stream before it was complete"}'


@pytest.mark.parametrize(
    ("path", "tail"),
    [("/api/chat?n=5&break=2", NATIVE_TAIL), ("/v1/chat/completions?n=5&break=2", b"api_error")],
)
def test_upstream_closing_mid_stream_ends_with_an_error_item(
    recorder: Upstream, start_proxy: ProxyFactory, path: str, tail: bytes
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    response = httpx.post(proxy.url + path, headers=USER, json={})
    assert response.status_code == 200
    assert response.content.count(b'"i": ') == 2
    assert tail in response.content.rstrip().splitlines()[-1]
    assert httpx.get(proxy.url + "/api/tags", headers=USER).status_code == 200


def test_upstream_down_is_502_json_without_internals(start_proxy: ProxyFactory) -> None:
    port = free_port()
    proxy = start_proxy(f"http://127.0.0.1:{port}")
    native = httpx.post(proxy.url + "/api/chat", headers=USER, json={"model": "m"})
    assert native.status_code == 502
    assert native.json() == {"error": "upstream Ollama is unavailable"}
    openai = httpx.post(proxy.url + "/v1/chat/completions", headers=USER, json={})
    assert openai.status_code == 502
    assert openai.json()["error"]["message"] == "upstream Ollama is unavailable"
    assert str(port) not in native.text + openai.text


def test_upstream_connections_are_reused_between_requests(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    app, upstream = recorder
    proxy = start_proxy(upstream.url)
    with httpx.Client(headers=USER) as client:
        for _ in range(5):
            assert client.get(proxy.url + "/api/tags").status_code == 200
        with client.stream("POST", proxy.url + "/api/chat?n=3", json={}) as r:
            r.read()
        assert client.get(proxy.url + "/api/tags").status_code == 200
    ports = {seen.client for seen in app.seen}
    assert len(app.seen) == 7
    assert len(ports) == 1, "each request opened a new connection to Ollama"


def test_ping_needs_no_key_and_follows_ollama(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    ping = httpx.get(proxy.url + "/ping")
    assert ping.status_code == 200
    assert USER_KEY not in ping.text
    down = start_proxy(f"http://127.0.0.1:{free_port()}")
    assert httpx.get(down.url + "/ping").status_code == 503


def test_status_shows_the_callers_key_name_never_the_key(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    assert httpx.get(proxy.url + "/ondemand/status").status_code == 401
    status = httpx.get(proxy.url + "/ondemand/status", headers=USER).json()
    assert (status["key"], status["admin"], status["status"]) == ("apikey", False, "ready")
    assert httpx.get(proxy.url + "/ondemand/status", headers=ADMIN).json()["admin"] is True


def test_keys_never_reach_the_log(
    recorder: Upstream, start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, upstream = recorder
    caplog.set_level("DEBUG")
    proxy = start_proxy(upstream.url)
    wrong = "odk_wrong_key_that_someone_typed"
    for headers in (USER, ADMIN, {"X-API-Key": wrong}, _basic("ci", wrong)):
        httpx.get(proxy.url + "/api/tags", headers=headers)
        httpx.post(proxy.url + "/api/pull", headers=headers, json={})
    down = start_proxy(f"http://127.0.0.1:{free_port()}")
    httpx.get(down.url + "/api/tags", headers=USER)
    httpx.get(proxy.url + "/api/tags%0Aforged%20line", headers={"X-API-Key": wrong})
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "GET '/api/tags' 401 key=-" in text
    assert "(credentials invalid)" in text
    assert not any("\n" in r.getMessage() for r in caplog.records)
    for secret in (USER_KEY, ADMIN_KEY, wrong):
        assert secret not in text


def test_a_finished_request_leaves_no_cyclic_garbage(
    recorder: Upstream, start_proxy: ProxyFactory
) -> None:
    """Requests are freed as they finish, not by the collector: garbage in reference
    cycles costs a busy proxy collection pauses, and holds each request's memory longer."""
    import gc

    _, upstream = recorder
    proxy = start_proxy(upstream.url)
    ours = {"_Response", "HttpResponseParser", "RequestResponseCycle", "Exchange",
            "RequestContext", "FrontDoorProtocol", "_DisconnectHook"}  # fmt: skip
    with httpx.Client(headers=USER) as client:
        client.get(proxy.url + "/api/tags")  # warm: pools and caches filled
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                assert client.post(proxy.url + "/api/chat?n=3", json={}).status_code == 200
                assert client.get(proxy.url + "/api/tags").status_code == 200
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = [type(o).__name__ for o in gc.garbage if type(o).__name__ in ours]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert cyclic == []
