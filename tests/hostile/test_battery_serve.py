"""The battery against ``ondemand serve`` as the image starts it (its Ollama the emulator):
the same front door holds there, and what reaches Ollama is read from the emulator's own
counters."""

from __future__ import annotations

import json

import pytest

from tests.hostile.conftest import (
    ADMIN_KEY,
    LIMITED_KEY,
    MAX_BODY,
    USER_KEY,
    Served,
    converse,
    json_post,
    raw,
    release_lease,
    request,
    take_lease,
)
from tests.hostile.test_battery_credentials import REFUSED as REFUSED_CREDENTIALS
from tests.hostile.test_battery_credentials import tags
from tests.hostile.test_battery_paths import TRAVERSALS
from tests.hostile.test_battery_smuggling import HEAD, SMUGGLED
from tests.hostile.test_battery_smuggling import REFUSED as REFUSED_FRAMING

CHAT = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}'
WATCHED = ("POST /api/chat", "POST /api/pull", "DELETE /api/delete", "GET /api/tags")


def ollama_routes(served: Served) -> dict[str, int]:
    """How many requests Ollama received, per watched route."""
    stats = raw(served.ollama_port, request("GET", "/_emulator/stats")).json()
    assert isinstance(stats, dict)
    return {route: stats["routes"].get(route, 0) for route in WATCHED}


def test_refused_credentials_never_reach_ollama(served: Served) -> None:
    before = ollama_routes(served)
    for variant, headers in REFUSED_CREDENTIALS.items():
        if variant == "query string":
            continue
        assert raw(served.port, tags(headers)).status == 401, variant
    assert ollama_routes(served) == before


def test_admin_routes_refuse_user_limited_and_per_run_keys(served: Served) -> None:
    lease_id, run_key = take_lease(served.port)
    before = ollama_routes(served)
    try:
        for key in (USER_KEY, LIMITED_KEY, run_key):
            for method, path in [("POST", "/api/pull"), ("DELETE", "/api/delete"),
                                 ("POST", "/ondemand/models"), ("POST", "/ondemand/drain"),
                                 ("GET", "/metrics"), ("GET", "/ondemand/leases")]:  # fmt: skip
                answer = raw(served.port, request(method, path, key=key, body=b'{"model":"x"}'))
                assert answer.status == 403, (method, path)
    finally:
        release_lease(served.port, lease_id)
    assert ollama_routes(served) == before
    assert raw(served.port, json_post("/api/chat", CHAT, key=run_key)).status == 401


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversals_are_400(served: Served, path: str) -> None:
    assert raw(served.port, request("POST", path, key=ADMIN_KEY, body=b"{}")).status == 400


def test_ambiguous_framing_is_refused_and_nothing_smuggled(served: Served) -> None:
    before = ollama_routes(served)
    for framing, data in REFUSED_FRAMING.items():
        responses, closed = converse(served.port, HEAD + data + SMUGGLED, timeout=3)
        assert closed, framing
        assert [r.status for r in responses] == [400], framing
    assert ollama_routes(served) == before


def test_a_pipelined_request_needs_its_own_key(served: Served) -> None:
    before = ollama_routes(served)
    first = json_post("/api/chat", CHAT, key=USER_KEY).replace(b"Connection: close\r\n", b"")
    responses, closed = converse(served.port, first + SMUGGLED)
    assert closed
    assert [r.status for r in responses] == [200, 401]
    after = ollama_routes(served)
    assert after["POST /api/chat"] == before["POST /api/chat"] + 1
    assert after["POST /api/pull"] == before["POST /api/pull"]


def test_bodies_over_the_cap_are_413(served: Served) -> None:
    before = ollama_routes(served)
    body = json.dumps({"model": "llama3.2", "prompt": "a" * MAX_BODY}).encode()
    assert raw(served.port, json_post("/api/chat", body, key=USER_KEY)).status == 413
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data = HEAD + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked
    responses, _ = converse(served.port, data)
    assert [r.status for r in responses] == [413]
    assert ollama_routes(served) == before


def test_a_limited_key_reaches_only_its_model(served: Served) -> None:
    before = ollama_routes(served)
    for model in ("mistral", "llama3.2:1b", "ll\u0430ma3.2", "someone/llama3.2"):
        body = json.dumps({"model": model, "messages": []}).encode()
        assert raw(served.port, json_post("/api/chat", body, key=LIMITED_KEY)).status == 403
    assert ollama_routes(served) == before
    answer = raw(served.port, json_post("/api/chat", CHAT, key=LIMITED_KEY))
    assert answer.status == 200
    assert ollama_routes(served)["POST /api/chat"] == before["POST /api/chat"] + 1


def test_nothing_above_left_a_traceback(served: Served) -> None:
    assert raw(served.port, request("GET", "/ping")).status == 200
    assert "Traceback" not in served.output()
