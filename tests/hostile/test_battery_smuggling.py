"""Request smuggling: whatever framing a client sends, Ollama receives exactly one
well-formed request per request the proxy authenticated, and never one nobody authenticated.

Each case is followed on the same connection by a request with no key (the smuggled one);
the recording upstream (``RawUpstream``) parses strictly and keeps the bytes it received.
"""

from __future__ import annotations

import pytest

from tests.hostile.conftest import USER_KEY, Process, RawUpstream, converse
from tests.proxy.rawhttp import RawResponse

AUTH = b"Authorization: Bearer " + USER_KEY.encode() + b"\r\n"
HEAD = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + AUTH
BODY = b'{"model":"llama3.2"}'
# What a front end and a back end disagreeing on the framing would take as a second request.
SMUGGLED = b"POST /api/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def assert_nothing_smuggled(
    upstream: RawUpstream, responses: list[RawResponse], *, forwarded: bool | None
) -> None:
    """At most the one authenticated request reached Ollama, whole and well framed; every
    other answer is the proxy refusing (400) or asking for a key (401)."""
    assert upstream.malformed == [], upstream.malformed
    targets = [r.target for r in upstream.seen]
    assert "/api/pull" not in targets, targets
    assert targets in ([], ["/api/chat"])
    if forwarded is not None:
        assert targets == (["/api/chat"] if forwarded else []), targets
    for seen in upstream.seen:
        assert seen.body == BODY, seen.body
        assert seen.header(b"transfer-encoding") in ([], [b"chunked"])
        assert not (seen.header(b"transfer-encoding") and seen.header(b"content-length"))
    statuses = [r.status for r in responses]
    if upstream.seen:
        assert statuses[0] == 200, statuses
        assert all(s in (400, 401) for s in statuses[1:]), statuses
    else:
        assert statuses, "no answer"
        assert all(s in (400, 401, 413, 501) for s in statuses), statuses


REFUSED = {
    "CL then TE": b"Content-Length: 25\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY),
    "TE then CL": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunked(BODY),
    "TE chunked, identity + CL": b"Transfer-Encoding: chunked, identity\r\n"
    + b"Content-Length: 20\r\n\r\n"
    + BODY,
    "TE chunked, identity": b"Transfer-Encoding: chunked, identity\r\n\r\n" + chunked(BODY),
    "TE xchunked + CL": b"Transfer-Encoding: xchunked\r\nContent-Length: 20\r\n\r\n" + BODY,
    "TE xchunked": b"Transfer-Encoding: xchunked\r\n\r\n" + chunked(BODY),
    "TE identity": b"Transfer-Encoding: identity\r\nContent-Length: 20\r\n\r\n" + BODY,
    "TE twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    + chunked(BODY),
    "space before colon": b"Transfer-Encoding : chunked\r\nContent-Length: 20\r\n\r\n"
    + chunked(BODY),
    "obs-fold TE": b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 20\r\n\r\n" + BODY,
    "vertical tab TE": b"Transfer-Encoding:\x0bchunked\r\nContent-Length: 20\r\n\r\n" + BODY,
    "two lengths": b"Content-Length: 20\r\nContent-Length: 0\r\n\r\n" + BODY,
    "two equal lengths": b"Content-Length: 20\r\nContent-Length: 20\r\n\r\n" + BODY,
    "length list": b"Content-Length: 20, 20\r\n\r\n" + BODY,
    "negative length": b"Content-Length: -20\r\n\r\n" + BODY,
    "plus length": b"Content-Length: +20\r\n\r\n" + BODY,
    "hex length": b"Content-Length: 0x14\r\n\r\n" + BODY,
    "overflowing length": b"Content-Length: 18446744073709551636\r\n\r\n" + BODY,
    "huge length": b"Content-Length: 99999999999999999999999999\r\n\r\n" + BODY,
    "chunk size overflow": b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff14\r\n"
    + BODY
    + b"\r\n0\r\n\r\n",
    "negative chunk": b"Transfer-Encoding: chunked\r\n\r\n-14\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk longer than said": b"Transfer-Encoding: chunked\r\n\r\n4\r\n" + BODY + b"\r\n0\r\n\r\n",
    "bare LF chunk": b"Transfer-Encoding: chunked\r\n\r\n14\n" + BODY + b"\n0\n\n",
}


@pytest.mark.parametrize("framing", list(REFUSED), ids=list(REFUSED))
def test_ambiguous_framing_is_refused_and_nothing_smuggled(
    proxy: Process, clean: RawUpstream, framing: str
) -> None:
    responses, closed = converse(proxy.port, HEAD + REFUSED[framing] + SMUGGLED, timeout=3)
    assert closed, "the proxy must close a connection whose framing it could not trust"
    assert_nothing_smuggled(clean, responses, forwarded=False)
    assert responses[0].status == 400


ACCEPTED = {
    "length": b"Content-Length: 20\r\nConnection: close\r\n\r\n" + BODY,
    "chunked": b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked(BODY),
    "Chunked": b"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n" + chunked(BODY),
    "extra spaces": b"Transfer-Encoding:   chunked  \r\nConnection: close\r\n\r\n" + chunked(BODY),
    "chunk extension": b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n14;x=y\r\n"
    + BODY
    + b"\r\n0\r\n\r\n",
    "split chunks": b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    + b"".join(b"1\r\n%s\r\n" % BODY[i : i + 1] for i in range(len(BODY)))
    + b"0\r\n\r\n",
}


@pytest.mark.parametrize("framing", list(ACCEPTED), ids=list(ACCEPTED))
def test_valid_framing_reaches_ollama_as_exactly_one_request(
    proxy: Process, clean: RawUpstream, framing: str
) -> None:
    responses, closed = converse(proxy.port, HEAD + ACCEPTED[framing] + SMUGGLED, timeout=3)
    assert closed
    assert_nothing_smuggled(clean, responses, forwarded=True)
    assert [r.status for r in responses] == [200]


def test_a_pipelined_request_does_not_inherit_the_first_ones_key(
    proxy: Process, clean: RawUpstream
) -> None:
    first = HEAD + b"Content-Length: 20\r\n\r\n" + BODY
    second = b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n"
    third = SMUGGLED
    responses, closed = converse(proxy.port, first + second + third, timeout=3)
    assert closed
    assert [r.status for r in responses] == [200, 401, 401]
    assert [r.target for r in clean.seen] == ["/api/chat"]
    assert clean.malformed == []


def test_a_body_that_looks_like_a_request_stays_a_body(proxy: Process, clean: RawUpstream) -> None:
    # A GET with a declared body: the body is part of this request, never a second one.
    get = b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH
    data = get + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED
    responses, closed = converse(proxy.port, data, timeout=3)
    assert closed
    assert [r.status for r in responses] == [200]
    assert clean.malformed == []
    [seen] = clean.seen
    assert (seen.target, seen.body) == ("/api/tags", SMUGGLED)


def test_keep_alive_requests_each_reach_ollama_once(proxy: Process, clean: RawUpstream) -> None:
    one = HEAD + b"Content-Length: 20\r\n\r\n" + BODY
    last = HEAD + b"Content-Length: 20\r\nConnection: close\r\n\r\n" + BODY
    responses, closed = converse(proxy.port, one * 4 + last, timeout=3)
    assert closed
    assert [r.status for r in responses] == [200] * 5
    assert [r.target for r in clean.seen] == ["/api/chat"] * 5
    assert all(r.body == BODY for r in clean.seen)
