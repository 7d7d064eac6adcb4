"""Path and method tricks, and the admin routes, against ``ondemand proxy`` from outside.

Every refused request must be answered by the proxy and never reach Ollama; every accepted
one reaches it once, on its canonical path, with no credentials.
"""

from __future__ import annotations

import pytest

from tests.hostile.conftest import (
    ADMIN_KEY,
    USER_KEY,
    Process,
    RawUpstream,
    converse,
    json_post,
    raw,
    release_lease,
    request,
    take_lease,
)

TRAVERSALS = [
    "/api/../api/pull",
    "/api/%2e%2e/api/pull",
    "/api/%2E%2E/api/pull",
    "/api/./pull",
    "/api/%2e/pull",
    "//api//chat",
    "//api/pull",
    "/api%2fpull",
    "/api%2Fpull",
    "/api/%2fpull",
    "/api\\pull",
    "/api/%5cpull",
    "/api/pu%00ll",
    "/api/%ff",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_and_encoded_separators_are_400_and_never_forwarded(
    proxy: Process, clean: RawUpstream, path: str
) -> None:
    for key in (USER_KEY, ADMIN_KEY):
        answer = raw(proxy.port, request("POST", path, key=key, body=b"{}"))
        assert answer.status == 400, (path, answer.body)
        assert b"malformed request path" in answer.body
    assert clean.seen == []


def test_percent_encoded_letters_cannot_hide_an_admin_route(
    proxy: Process, clean: RawUpstream
) -> None:
    answer = raw(proxy.port, json_post("/api/%70ull", b'{"model":"x"}', key=USER_KEY))
    assert answer.status == 403
    assert clean.seen == []
    answer = raw(proxy.port, json_post("/api/%70ull", b'{"model":"x"}', key=ADMIN_KEY))
    assert answer.status == 200
    assert [r.target for r in clean.seen] == ["/api/pull"]


def test_absolute_form_targets_go_to_the_configured_upstream_only(
    proxy: Process, clean: RawUpstream
) -> None:
    answer = raw(proxy.port, request("GET", "http://evil.example/api/tags", key=USER_KEY))
    assert answer.status == 200
    [seen] = clean.seen
    assert seen.target == "/api/tags"
    assert b"evil" not in seen.head
    answer = raw(proxy.port, json_post("http://evil.example/api/pull", b"{}", key=USER_KEY))
    assert answer.status == 403
    assert len(clean.seen) == 1


@pytest.mark.parametrize(
    "line",
    [
        b"CONNECT evil.example:443 HTTP/1.1",
        b"CONNECT 127.0.0.1:22 HTTP/1.1",
        b"get /api/tags HTTP/1.1",
        b"GeT /api/tags HTTP/1.1",
        b"G\x00T /api/tags HTTP/1.1",
        b"TRACK /api/tags HTTP/1.1",
        b"GET /api/tags HTTP/9.9",
        b"GET /api/tags FTP/1.1",
    ],
)
def test_malformed_request_lines_are_refused_and_the_connection_closed(
    proxy: Process, clean: RawUpstream, line: bytes
) -> None:
    data = line + b"\r\nHost: x\r\nAuthorization: Bearer " + USER_KEY.encode() + b"\r\n\r\n"
    responses, closed = converse(proxy.port, data)
    assert [r.status for r in responses] in ([400], [])
    assert closed
    assert clean.seen == []


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "PATCH", "PUT", "OPTIONS"])
def test_methods_ollama_does_not_serve_are_405_and_never_forwarded(
    proxy: Process, clean: RawUpstream, method: str
) -> None:
    answer = raw(proxy.port, request(method, "/api/tags", key=USER_KEY))
    assert answer.status == 405, answer.body
    assert answer.headers["allow"] == "GET, HEAD, POST, DELETE"
    assert USER_KEY.encode() not in answer.body
    assert clean.seen == []
    # Without a key it is still 401 first: nothing about the server is told to strangers.
    assert raw(proxy.port, request(method, "/api/tags")).status == 401


def test_http_1_0_is_served_and_forwarded_as_one_request(
    proxy: Process, clean: RawUpstream
) -> None:
    responses, closed = converse(
        proxy.port, request("GET", "/api/tags", key=USER_KEY, version="HTTP/1.0", close=False)
    )
    assert [r.status for r in responses] == [200]
    assert closed  # HTTP/1.0 without keep-alive: one request per connection
    assert [r.target for r in clean.seen] == ["/api/tags"]


@pytest.mark.parametrize(
    "data", [b"GET /api/tags\r\n\r\n", b"GET\r\n\r\n", b"/api/tags\r\n\r\n", b"GET /api/tags"]
)
def test_http_0_9_style_lines_without_a_key_never_reach_ollama(
    proxy: Process, clean: RawUpstream, data: bytes
) -> None:
    responses, closed = converse(proxy.port, data, timeout=3, half_close=True)
    assert closed, "the proxy must answer or close, not wait"
    assert all(r.status in (400, 401) for r in responses), responses
    assert clean.seen == []
    assert clean.malformed == []


def test_a_version_less_request_line_with_a_key_is_forwarded_as_one_http_1_1_request(
    proxy: Process, clean: RawUpstream
) -> None:
    data = b"GET /api/tags\r\nConnection: close\r\nAuthorization: Bearer %s\r\n\r\n" % (
        USER_KEY.encode()
    )
    responses, closed = converse(proxy.port, data)
    assert closed
    assert clean.malformed == []
    if [r.status for r in responses] == [200]:
        [seen] = clean.seen
        assert seen.request_line == b"GET /api/tags HTTP/1.1"
        assert seen.header(b"authorization") == []
    else:  # or refused by the parser, and then not forwarded at all
        assert [r.status for r in responses] == [400]
        assert clean.seen == []


ADMIN_ROUTES = [
    ("GET", "/ondemand/leases"),
    ("POST", "/ondemand/leases"),
    ("DELETE", "/ondemand/leases/lse_whatever"),
    ("POST", "/ondemand/drain"),
    ("GET", "/ondemand/drain"),
    ("DELETE", "/ondemand/drain"),
    ("POST", "/ondemand/models"),
    ("GET", "/metrics"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/blobs/sha256:00"),
    ("POST", "/api/experimental/web_search"),
]


def test_admin_routes_refuse_user_and_per_run_keys(proxy: Process, clean: RawUpstream) -> None:
    lease_id, run_key = take_lease(proxy.port)
    try:
        for key in (USER_KEY, run_key):
            for method, path in ADMIN_ROUTES:
                answer = raw(proxy.port, request(method, path, key=key, body=b"{}"))
                assert answer.status == 403, (method, path, answer.body)
                assert b"admin" in answer.body
        for method, path in ADMIN_ROUTES:
            assert raw(proxy.port, request(method, path, body=b"{}")).status == 401
        assert clean.seen == []
        # The lease the per-run key came with is still there: nothing was released or drained.
        held = raw(proxy.port, request("GET", "/ondemand/leases", key=ADMIN_KEY)).json()
        assert [lease["id"] for lease in held["leases"]] == [lease_id]  # type: ignore[index]
    finally:
        release_lease(proxy.port, lease_id)


def test_unknown_routes_are_404_whatever_the_key(proxy: Process, clean: RawUpstream) -> None:
    for path in ("/api/unknown", "/v2/chat", "/ondemand", "/ondemand/", "/ondemand/status/x",
                 "/api/tags/", "/metrics/"):  # fmt: skip
        for key in (USER_KEY, ADMIN_KEY):
            assert raw(proxy.port, request("GET", path, key=key)).status in (400, 404), path
    assert clean.seen == []
