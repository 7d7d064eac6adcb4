"""Body caps: a body over ``ONDEMAND_MAX_BODY`` (64 KiB here) is answered 413 however it is
framed, and nothing of it reaches Ollama."""

from __future__ import annotations

import socket

import pytest

from tests.hostile.conftest import (
    ADMIN_KEY,
    LIMITED_KEY,
    MAX_BODY,
    USER_KEY,
    Process,
    RawUpstream,
    converse,
    json_post,
    raw,
)
from tests.proxy.rawhttp import read_response

AUTH = f"Authorization: Bearer {USER_KEY}\r\n".encode()


def padded(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes."""
    prefix, suffix = b'{"model":"llama3.2","prompt":"', b'"}'
    return prefix + b"a" * (size - len(prefix) - len(suffix)) + suffix


@pytest.mark.parametrize("key", [USER_KEY, LIMITED_KEY, ADMIN_KEY])
def test_a_body_at_the_cap_is_forwarded_whole(proxy: Process, clean: RawUpstream, key: str) -> None:
    body = padded(MAX_BODY)
    assert raw(proxy.port, json_post("/api/generate", body, key=key)).status == 200
    [seen] = clean.seen
    assert len(seen.body) == MAX_BODY


@pytest.mark.parametrize("key", [USER_KEY, LIMITED_KEY, ADMIN_KEY])
def test_a_declared_length_over_the_cap_is_413_before_the_body_is_sent(
    proxy: Process, clean: RawUpstream, key: str
) -> None:
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (key.encode(), MAX_BODY + 1)
    )
    # Only the head is sent: the answer must not wait for a body it will refuse anyway.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head)
        answer = read_response(sock)
    assert answer.status == 413, answer.body
    assert clean.seen == []


@pytest.mark.parametrize("size", [MAX_BODY + 1, 4 * MAX_BODY])
def test_a_chunked_body_over_the_cap_is_413_and_nothing_forwarded(
    proxy: Process, clean: RawUpstream, size: int
) -> None:
    body = padded(size)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192])
        for i in range(0, len(body), 8192)
    )
    data = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    )  # fmt: skip
    responses, closed = converse(proxy.port, data)
    assert [r.status for r in responses] == [413]
    assert closed
    assert clean.seen == []
    assert clean.malformed == []


def test_a_chunked_body_at_the_cap_is_forwarded_once_with_a_length(
    proxy: Process, clean: RawUpstream
) -> None:
    body = padded(MAX_BODY)
    data = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )  # fmt: skip
    responses, _ = converse(proxy.port, data)
    assert [r.status for r in responses] == [200]
    [seen] = clean.seen
    assert seen.body == body


def test_a_body_without_length_or_chunks_is_not_read_as_part_of_the_request(
    proxy: Process, clean: RawUpstream
) -> None:
    # HTTP/1.1 without Content-Length or Transfer-Encoding has no body: what follows is
    # another request, which needs its own key. (Garbage after it would make the proxy drop
    # the connection while the first request may still be on its way: a race, not a check.)
    follows = b"POST /api/pull HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % MAX_BODY
    follows += b"Connection: close\r\n\r\n" + padded(MAX_BODY)
    data = b"POST /api/generate HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n" + follows
    responses, closed = converse(proxy.port, data)
    assert closed
    assert [r.status for r in responses] == [200, 401]
    [seen] = clean.seen
    assert (seen.target, seen.body) == ("/api/generate", b"")


def test_a_user_key_cannot_stream_an_unbounded_blob(proxy: Process, clean: RawUpstream) -> None:
    # Blob uploads are exempt from the cap, so only the admin key may send them.
    head = (
        b"POST /api/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Length: 1099511627776\r\n\r\n"
    )  # fmt: skip
    # Only the head: the refusal must not wait for the body (and sending on after it would
    # race the proxy closing the connection).
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head)
        answer = read_response(sock)
    assert answer.status == 403
    assert clean.seen == []
