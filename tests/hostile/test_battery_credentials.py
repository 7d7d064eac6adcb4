"""Credentials as hostile or sloppy clients send them: every variant is either exactly a key
that was issued or 401, a refused request never reaches Ollama, an accepted one reaches it
without its credentials, and one request is one guess."""

from __future__ import annotations

import base64
import json
import socket
import statistics
import time

import pytest

from tests.hostile.conftest import (
    ADMIN_KEY,
    BASIC_PASSWORD,
    BASIC_USER,
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
from tests.proxy.rawhttp import read_response


def b64(raw_bytes: bytes) -> str:
    return base64.b64encode(raw_bytes).decode()


def tags(headers: bytes) -> bytes:
    return b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"


K = USER_KEY.encode()
NON_UTF8 = b"\xff\xfe:" + b"\xc3\x28" * 8
ACCEPTED = {
    "Bearer": b"Authorization: Bearer " + K + b"\r\n",
    "bearer": b"Authorization: bearer " + K + b"\r\n",
    "BEARER": b"Authorization: BEARER " + K + b"\r\n",
    "spaces": b"Authorization:    Bearer    " + K + b"   \r\n",
    "X-API-Key": b"X-API-Key: " + K + b"\r\n",
    "x-api-key": b"x-api-key:  " + K + b" \r\n",
    "X-API-Key wins": b"Authorization: Bearer wrong\r\nX-API-Key: " + K + b"\r\n",
    "Basic key as password": f"Authorization: Basic {b64(b'anyone:' + K)}\r\n".encode(),
    "Basic empty user": f"Authorization: Basic {b64(b':' + K)}\r\n".encode(),
    "basic": f"authorization: basic {b64(b'x:' + K)}\r\n".encode(),
    "Basic user:password": "Authorization: Basic {}\r\n".format(
        b64(f"{BASIC_USER}:{BASIC_PASSWORD}".encode())
    ).encode(),
}


@pytest.mark.parametrize("variant", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepted_forms_reach_ollama_without_credentials(
    proxy: Process, clean: RawUpstream, variant: str
) -> None:
    answer = raw(proxy.port, tags(ACCEPTED[variant]))
    assert answer.status == 200, answer.body
    [seen] = clean.seen
    for name in (b"authorization", b"x-api-key", b"proxy-authorization", b"cookie"):
        assert seen.header(name) == []
    assert K not in seen.raw
    assert BASIC_PASSWORD.encode() not in seen.raw


REFUSED = {
    "none": b"",
    "empty Authorization": b"Authorization: \r\n",
    "scheme only": b"Authorization: Bearer\r\n",
    "scheme and space": b"Authorization: Bearer \r\n",
    "empty X-API-Key": b"X-API-Key: \r\n",
    "empty X-API-Key beats a good Authorization": b"X-API-Key: \r\nAuthorization: Bearer "
    + K
    + b"\r\n",
    "unknown scheme": b"Authorization: Token " + K + b"\r\n",
    "no scheme": b"Authorization: " + K + b"\r\n",
    "tab for space": b"Authorization: Bearer\t" + K + b"\r\n",
    "suffix": b"Authorization: Bearer " + K + b"x\r\n",
    "prefix": b"Authorization: Bearer x" + K + b"\r\n",
    "truncated": b"Authorization: Bearer " + K[:-1] + b"\r\n",
    "upper-cased key": b"Authorization: Bearer " + K.upper() + b"\r\n",
    "key twice": b"Authorization: Bearer " + K + b" " + K + b"\r\n",
    "key, comma": b"Authorization: Bearer " + K + b",\r\n",
    "sha256 of the key": b"Authorization: Bearer sha256:" + b"0" * 64 + b"\r\n",
    "X-API-Key suffix": b"X-API-Key: " + K + b"x\r\n",
    "Basic no colon": f"Authorization: Basic {b64(K)}\r\n".encode(),
    "Basic not base64": b"Authorization: Basic %%%" + K + b"\r\n",
    "Basic raw": b"Authorization: Basic anyone:" + K + b"\r\n",
    "Basic wrong password": b"Authorization: Basic "
    + base64.b64encode(BASIC_USER.encode() + b":nope")
    + b"\r\n",
    "Basic password suffix": "Authorization: Basic {}\r\n".format(
        b64(f"{BASIC_USER}:{BASIC_PASSWORD}x".encode())
    ).encode(),
    "Basic user as key": f"Authorization: Basic {b64(K + b':')}\r\n".encode(),
    "Basic non-UTF-8": b"Authorization: Basic " + base64.b64encode(NON_UTF8) + b"\r\n",
    "non-UTF-8 Bearer": b"Authorization: Bearer \xff\xfe\xfd" + K + b"\r\n",
    "non-UTF-8 X-API-Key": b"X-API-Key: \xc3\x28" + K + b"\r\n",
    "Latin-1 look-alike": "Authorization: Bearer {}\r\n".format(
        USER_KEY.replace("o", "\u00f6", 1)
    ).encode("latin-1"),
    "very long": b"Authorization: Bearer " + K * 1000 + b"\r\n",
    "two Authorization, bad first": b"Authorization: Bearer wrong\r\nAuthorization: Bearer "
    + K
    + b"\r\n",
    "two X-API-Key, bad first": b"X-API-Key: wrong\r\nX-API-Key: " + K + b"\r\n",
    "Proxy-Authorization": b"Proxy-Authorization: Bearer " + K + b"\r\n",
    "Cookie": b"Cookie: key=" + K + b"\r\n",
    "query string": b"",
}


@pytest.mark.parametrize("variant", list(REFUSED), ids=list(REFUSED))
def test_anything_but_an_issued_key_is_401_and_never_forwarded(
    proxy: Process, clean: RawUpstream, variant: str
) -> None:
    data = tags(REFUSED[variant])
    if variant == "query string":
        data = data.replace(b"/api/tags", b"/api/tags?key=" + K)
    responses, closed = converse(proxy.port, data)
    assert closed
    [answer] = responses
    assert answer.status == 401, (variant, answer.status, answer.body)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert K not in answer.body
    assert clean.seen == []


def test_a_second_header_is_never_a_second_guess(proxy: Process, clean: RawUpstream) -> None:
    # One request is one guess: a client cannot list candidates and let the proxy pick.
    guesses = b"".join(b"X-API-Key: guess%d\r\n" % i for i in range(50))
    assert raw(proxy.port, tags(guesses + b"X-API-Key: " + K + b"\r\n")).status == 401
    guesses = b"".join(b"Authorization: Bearer guess%d\r\n" % i for i in range(50))
    assert raw(proxy.port, tags(guesses + b"Authorization: Bearer " + K + b"\r\n")).status == 401
    assert clean.seen == []


def test_a_user_key_with_an_admin_key_appended_is_not_admin(
    proxy: Process, clean: RawUpstream
) -> None:
    for headers in (
        b"Authorization: Bearer " + K + b"\r\nX-API-Key: " + ADMIN_KEY.encode() + b"x\r\n",
        b"X-API-Key: " + K + b"\r\nAuthorization: Bearer " + ADMIN_KEY.encode() + b"\r\n",
    ):
        data = tags(headers).replace(b"/api/tags", b"/metrics")
        assert raw(proxy.port, data).status in (401, 403)
    assert clean.seen == []


def test_a_per_run_key_works_until_its_lease_is_released(
    proxy: Process, clean: RawUpstream
) -> None:
    lease_id, run_key = take_lease(proxy.port, models=["llama3.2"])
    chat = json_post("/api/chat", b'{"model":"llama3.2"}', key=run_key)
    assert raw(proxy.port, chat).status == 200
    forged = run_key[:-2] + ("AA" if not run_key.endswith("AA") else "BB")
    assert raw(proxy.port, json_post("/api/chat", b"{}", key=forged)).status == 401
    release_lease(proxy.port, lease_id)
    answer = raw(proxy.port, chat)
    assert answer.status == 401, answer.body
    assert raw(proxy.port, request("GET", "/ondemand/status", key=run_key)).status == 401
    assert len(clean.seen) == 1


def test_a_per_run_key_dies_with_a_drain_release(proxy: Process, clean: RawUpstream) -> None:
    lease_id, run_key = take_lease(proxy.port)
    assert raw(proxy.port, request("GET", "/api/tags", key=run_key)).status == 200
    drain = json.dumps({"release": lease_id, "ttl_seconds": 1}).encode()
    assert raw(proxy.port, json_post("/ondemand/drain", drain, key=ADMIN_KEY)).status == 200
    assert raw(proxy.port, request("DELETE", "/ondemand/drain", key=ADMIN_KEY)).status == 200
    assert raw(proxy.port, request("GET", "/api/tags", key=run_key)).status == 401
    assert len(clean.seen) == 1


def _median_seconds(sock: socket.socket, data: bytes, samples: list[float]) -> None:
    start = time.perf_counter()
    sock.sendall(data)
    assert read_response(sock).status == 401
    samples.append(time.perf_counter() - start)


def test_wrong_keys_take_the_same_time_however_close_they_are(proxy: Process) -> None:
    """Coarse on purpose, so it cannot flake: interleaved tries (load hits both alike),
    medians, and a margin far above the nanoseconds a short-circuiting compare would show.
    The real guarantee is behavioural (digests compared with hmac.compare_digest against
    every key); this catches a gross regression such as a per-byte delay or a slow path."""
    near = USER_KEY[:-1] + ("x" if USER_KEY[-1] != "x" else "y")  # wrong in the last byte
    far = "x" * len(USER_KEY)  # wrong from the first byte
    other = "y" * 7  # another length
    timings: dict[str, list[float]] = {"near": [], "far": [], "other": []}
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        for _ in range(3):  # warm up the connection and the path
            _median_seconds(sock, request("GET", "/api/tags", key=far, close=False), [])
        for _ in range(60):
            for name, key in (("near", near), ("far", far), ("other", other)):
                data = request("GET", "/api/tags", key=key, close=False)
                _median_seconds(sock, data, timings[name])
    medians = {name: statistics.median(values) for name, values in timings.items()}
    fastest = min(medians.values())
    for name, value in medians.items():
        assert value <= 2 * fastest + 0.002, (name, medians)
