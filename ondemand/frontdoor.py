"""The front door: what a connection may cost before it becomes a request the app sees.

uvicorn with httptools bounds none of this by itself: httptools accumulates a header of any
size (quadratically: a 200 MiB header took ~56 s of one event loop), accepts any number of
headers, and a connection that sends nothing, or a head or body one byte at a time, is held
for ever. ``DoorLimits`` are the caps, ``protocol_class`` the uvicorn protocol that enforces
them by counting bytes *before* they reach the parser, as nginx does with its header
buffers (``large_client_header_buffers``, ``client_header_timeout``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from ondemand.asgi import BODY_GRACE, FRONT_DOOR, ON_DISCONNECT
from ondemand.descriptors import affordable_connections, raise_open_file_limit
from ondemand.errors import NotAvailableError

log = logging.getLogger("ondemand.frontdoor")

DEFAULT_MAX_HEAD = 32 * 1024
DEFAULT_MAX_REQUEST_LINE = 8 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_BODY_GRACE = 30.0
DEFAULT_BODY_MIN_RATE = 1024
# Held idle, a connection costs ~8 KiB (a partial head up to max_head more); the cap is
# lowered to what the process's open-file limit affords (ondemand/descriptors.py).
DEFAULT_MAX_CONNECTIONS = 4096
# Turned-away connections are logged at most this often, as one summary line.
SUMMARY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class DoorLimits:
    # Request line + headers, in bytes, per request (nginx: 1k + 4 x 8k buffers).
    max_head: int = DEFAULT_MAX_HEAD
    # The request line alone (method, target, version); above it 414.
    max_request_line: int = DEFAULT_MAX_REQUEST_LINE
    max_headers: int = DEFAULT_MAX_HEADERS
    # From a connection's opening (or the end of its previous response) to the end of the
    # next request's headers; an idle keep-alive connection is closed after it too.
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    # A body must arrive within ``body_grace`` seconds plus one second per
    # ``body_min_rate`` bytes received (Apache's RequestReadTimeout body=…,MinRate=…).
    body_grace: float = DEFAULT_BODY_GRACE
    body_min_rate: int = DEFAULT_BODY_MIN_RATE
    # Open connections at once, idle ones included (None: DEFAULT_MAX_CONNECTIONS, or less
    # where the open-file limit affords less; see ``resolved``).
    max_connections: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DoorLimits:
        from ondemand.envvalues import Env

        read = Env(env)
        # A size of 0 would refuse every request (or divide by zero, for the rate).
        size, count, seconds = partial(read.size, minimum=1), read.count, read.seconds

        return cls(
            max_head=size("ONDEMAND_MAX_HEADER_SIZE", DEFAULT_MAX_HEAD),
            max_request_line=size("ONDEMAND_MAX_REQUEST_LINE", DEFAULT_MAX_REQUEST_LINE),
            max_headers=count("ONDEMAND_MAX_HEADERS", DEFAULT_MAX_HEADERS),
            header_timeout=seconds("ONDEMAND_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            body_grace=seconds("ONDEMAND_BODY_TIMEOUT", DEFAULT_BODY_GRACE),
            body_min_rate=size("ONDEMAND_BODY_MIN_RATE", DEFAULT_BODY_MIN_RATE),
            max_connections=read.optional_count("ONDEMAND_MAX_CONNECTIONS"),
        )

    def resolved(self) -> DoorLimits:
        """These limits with the connection cap settled for this process, whose open-file
        limit is raised to its hard limit first (as Go programs, Ollama among them, do at
        start): a cap the descriptors cannot hold would turn a flood into failed accepts."""
        affordable = affordable_connections(raise_open_file_limit())
        if self.max_connections is None:
            return replace(self, max_connections=min(DEFAULT_MAX_CONNECTIONS, affordable))
        if self.max_connections > affordable:
            log.warning(
                "ONDEMAND_MAX_CONNECTIONS=%d is more than the open-file limit affords (about "
                "%d: each busy connection also holds one to Ollama); raise `ulimit -n`",
                self.max_connections, affordable,
            )  # fmt: skip
        return self


_STATUS_TEXT = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """One way the front door turns a connection away: the answer, and its name in the
    ``ondemand_front_door_turned_away`` metric and the log summary."""

    status: int
    message: str
    reason: str
    why: str  # for the log summary


MALFORMED = Refusal(400, "invalid HTTP request", "malformed", "unreadable requests (400)")
LINE_TOO_LONG = Refusal(
    414, "request line too long", "line_too_long",
    "request lines over ONDEMAND_MAX_REQUEST_LINE (414)",
)  # fmt: skip
HEAD_TOO_LARGE = Refusal(
    431, "request header fields too large", "head_too_large",
    "heads over ONDEMAND_MAX_HEADER_SIZE (431)",
)  # fmt: skip
TOO_MANY_HEADERS = Refusal(
    431, "too many header fields", "too_many_headers", "heads over ONDEMAND_MAX_HEADERS (431)"
)
HEAD_TIMEOUT = Refusal(
    408, "timed out reading the request headers", "head_timeout",
    "heads unfinished after ONDEMAND_HEADER_TIMEOUT (408)",
)  # fmt: skip
BODY_TIMEOUT = Refusal(
    408, "timed out reading the request body", "body_timeout",
    "bodies slower than ONDEMAND_BODY_TIMEOUT / ONDEMAND_BODY_MIN_RATE (408)",
)  # fmt: skip
FULL = Refusal(
    503, "too many connections; retry shortly", "full",
    "new connections while all ONDEMAND_MAX_CONNECTIONS were busy (503)",
)  # fmt: skip
# Not an answer: a connection waiting for a request, closed to make room for a new one.
EVICTED = Refusal(
    0, "", "evicted", "waiting connections closed to make room under ONDEMAND_MAX_CONNECTIONS"
)
TURNED_AWAY = (EVICTED, FULL, MALFORMED, LINE_TOO_LONG, HEAD_TOO_LARGE, TOO_MANY_HEADERS,
               HEAD_TIMEOUT, BODY_TIMEOUT)  # fmt: skip


def refusal(status: int, message: str, extra: bytes = b"") -> bytes:
    """A whole response that ends the connection; JSON, as Ollama's clients read errors."""
    body = json.dumps({"error": message}).encode()
    return (
        (
            f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + body
    )


class DoorCounts:
    """What one server's front door did since it started: connections open now and those
    turned away by reason (read by the proxy's ``/metrics``). Turned-away connections are
    logged too, the first after a quiet spell at once and the rest as one line a minute, so
    a flood of thousands a second is visible without flooding the log."""

    def __init__(self, summary_seconds: float = SUMMARY_SECONDS) -> None:
        self.summary_seconds = summary_seconds
        self.open = 0
        self.turned_away: Counter[str] = Counter()
        # What the doors of the proxy's worker processes report, by worker (they serve the
        # same port, so /metrics shows the sums).
        self.elsewhere: dict[object, tuple[int, Counter[str]]] = {}
        self._unlogged: Counter[str] = Counter()
        self._summary: asyncio.TimerHandle | None = None

    def open_everywhere(self) -> int:
        return self.open + sum(open_ for open_, _ in self.elsewhere.values())

    def turned_away_everywhere(self, reason: str) -> int:
        return self.turned_away[reason] + sum(c[reason] for _, c in self.elsewhere.values())

    def add(self, refused: Refusal, loop: asyncio.AbstractEventLoop) -> None:
        self.turned_away[refused.reason] += 1
        if self._summary is not None:
            self._unlogged[refused.reason] += 1
            return
        log.warning("front door turned a connection away: %s", refused.why)
        self._summary = loop.call_later(self.summary_seconds, self._log_summary, loop)

    def _log_summary(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._unlogged:
            self._summary = None
            return
        parts = [f"{self._unlogged[r.reason]:,} {r.why}" for r in TURNED_AWAY
                 if self._unlogged[r.reason]]  # fmt: skip
        log.warning(
            "front door turned %s connections away in the last %g s: %s",
            f"{sum(self._unlogged.values()):,}", self.summary_seconds, "; ".join(parts),
        )  # fmt: skip
        self._unlogged.clear()
        self._summary = loop.call_later(self.summary_seconds, self._log_summary, loop)


# A blank line ends a head and a chunked body: CRLF, or a bare LF where the parser is lenient
# about CR (httptools' llhttp before 9). Both patterns end where the blank line does.
_BLANK_LINES = (b"\n\r\n", b"\n\n")


def _blank_line_end(data: bytes, start: int, stop: int, *, last: bool = False) -> int:
    """Where the first (or ``last``) blank line within ``data[start:stop]`` ends; -1 if
    there is none. Searches run in C: no Python loop over the bytes."""
    crlf, lf = _BLANK_LINES
    if last:
        return max((i + len(p) for p in _BLANK_LINES if (i := data.rfind(p, start, stop)) >= 0),
                   default=-1)  # fmt: skip
    found = data.find(crlf, start, stop)
    end = found + len(crlf) if found >= 0 else stop
    # A bare-LF blank line counts only before the first CRLF one: no scan past it.
    bare = data.find(lf, start, end)
    if bare >= 0:
        return bare + len(lf)
    return end if found >= 0 else -1


class _Refused(Exception):
    """Raised from a parser callback to stop httptools at once."""

    def __init__(self, refused: Refusal) -> None:
        super().__init__(refused.message)
        self.refused = refused


# The oldest uvicorn whose HttpToolsProtocol has every method below with the meaning relied
# on here (``_unsupported_upgrade_warning`` arrived in 0.30.6); pyproject.toml says the same.
OLDEST_UVICORN = (0, 30, 6)
# What FrontDoorProtocol calls or overrides of uvicorn's protocol. It also reads attributes
# that uvicorn sets per connection (parser, transport, loop, connections, pipeline, cycle,
# flow.read_paused), which exist in the same releases.
_UVICORN_METHODS = (
    "connection_made", "connection_lost", "data_received", "_unset_keepalive_if_required",
    "_unsupported_upgrade_warning", "on_message_begin", "on_url", "on_header",
    "on_headers_complete", "on_body", "on_message_complete", "on_response_complete",
)  # fmt: skip


def _check_uvicorn(protocol: type[Any]) -> None:
    """Refuse, with a message naming the version, a uvicorn whose protocol lacks what the
    front door builds on, rather than failing with an AttributeError mid-request."""
    import uvicorn

    version = str(getattr(uvicorn, "__version__", "?"))
    missing = [name for name in _UVICORN_METHODS if not callable(getattr(protocol, name, None))]
    try:
        too_old = tuple(int(part) for part in version.split(".")[:3]) < OLDEST_UVICORN
    except ValueError:  # a development version: the methods decide
        too_old = False
    if missing or too_old:
        oldest = ".".join(map(str, OLDEST_UVICORN))
        raise NotAvailableError(
            f"uvicorn {version} is not supported by ondemand's front door"
            + (f" (its HTTP protocol lacks {', '.join(missing)})" if missing else ""),
            cause=f"the front door extends uvicorn's httptools protocol, as of uvicorn {oldest}",
            hint=f"pip install 'uvicorn>={oldest}' (or reinstall 'ollama-ondemand[server]')",
        )


# A closed connection's disconnect callbacks: none kept, each called at once.
_GONE: dict[Any, Callable[[], None]] = {}


class _DisconnectHook:
    """A request's ``on_disconnect``: registers with its connection a callback for when the
    client goes away. Weak references: held in the request's scope, strong ones would tie
    each finished request into a reference cycle, left for the collector to find."""

    __slots__ = ("_cycle", "_protocol")

    def __init__(self, protocol: Any, cycle: Any) -> None:
        self._protocol = weakref.ref(protocol)
        self._cycle = weakref.ref(cycle)

    def __call__(self, callback: Callable[[], None] | None) -> None:
        protocol, cycle = self._protocol(), self._cycle()
        if protocol is not None and cycle is not None:
            protocol._watch_disconnect(cycle, callback)


def protocol_class(limits: DoorLimits, counts: DoorCounts | None = None) -> type[Any]:
    """uvicorn's httptools protocol, with ``limits`` enforced before the parser works and
    what it turns away counted in ``counts``. ``limits`` must be ``resolved()``."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    _check_uvicorn(HttpToolsProtocol)

    # The connections of this server waiting for a request's head, longest first: a dict
    # keeps insertion order, so finding the one to evict and moving one are both O(1).
    waiting: dict[FrontDoorProtocol, None] = {}
    counted = counts or DoorCounts()
    cap = limits.max_connections or DEFAULT_MAX_CONNECTIONS

    class FrontDoorProtocol(HttpToolsProtocol):
        door = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            # Whether the parser has seen the first byte of the pending request (blank lines
            # before one are skipped), and the last bytes fed: a blank line ending a head
            # or a chunked body may be split across two reads.
            self._begun = False
            self._tail = b""
            # The body's declared length (None: chunked, or none) and what of it has come.
            self._content_length: int | None = None
            self._body_seen = 0
            self._messages = 0
            self._line_bytes = 0
            self._header_count = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None
            self._body_started = 0.0
            self._body_last = 0.0  # when the last piece of the body came
            self._body_bytes = 0
            self._refused = False
            # Per request still being answered: what to call if the client goes away.
            self._on_lost: dict[Any, Callable[[], None]] = {}

        # -- connection --------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            counted.open += 1
            self._arm_head_timer()
            if len(self.connections) > cap and not self._evict_one():
                # Every connection is busy with a request: refused before a byte is read,
                # so a flood cannot grow memory or hold sockets. The answer waits in the
                # client's buffer for its request.
                self._refuse(FULL, b"retry-after: 1\r\n")

        def _evict_one(self) -> bool:
            """Make room by closing the connection that has waited longest for a request
            (an idle keep-alive, a slow head), never one whose request is being served: a
            flood of idle or slow connections cannot lock out clients that send requests."""
            for victim in waiting:  # oldest first
                if victim is not self:
                    counted.add(EVICTED, self.loop)
                    victim._give_up(counting=False)
                    return True
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            counted.open -= 1
            self._cancel_timers()
            on_lost, self._on_lost = self._on_lost, _GONE
            super().connection_lost(exc)
            for cycle, callback in on_lost.items():
                if not cycle.response_complete:
                    callback()

        def _watch_disconnect(self, cycle: Any, callback: Callable[[], None] | None) -> None:
            if callback is None:
                self._on_lost.pop(cycle, None)
            elif self._on_lost is not _GONE:
                self._on_lost[cycle] = callback
            elif not cycle.response_complete:
                self.loop.call_soon(callback)  # the client has gone already

        def _cancel_timers(self) -> None:
            waiting.pop(self, None)
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = None

        def _refuse(self, refused: Refusal, extra: bytes = b"", *, counting: bool = True) -> None:
            if counting:
                counted.add(refused, self.loop)
            self._refused = True
            self._cancel_timers()
            if not self.transport.is_closing():
                self.transport.write(refusal(refused.status, refused.message, extra))
                self.transport.close()

        # -- bytes in ----------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            # Each feed ends where the parser may finish a head (its blank line) or a
            # message (the end of a sized body), so a pipelined request's head is counted
            # from its first byte even when it shares a read with the request before it.
            # Pieces are memoryview slices: a body is not copied on its way to the parser.
            view = memoryview(data)
            at = 0
            while at < len(data) and not self._refused and not self.transport.is_closing():
                at = (
                    self._feed_head(data, view, at)
                    if self._in_head
                    else self._feed_body(data, view, at)
                )

        def _feed_head(self, data: bytes, view: memoryview, at: int) -> int:
            """Feed the pending head from ``data[at:]``, up to its blank line or the cap;
            where the feed stopped."""
            stop = min(at + self.door.max_head - self._head_bytes, len(data))
            cut = -1
            if self._begun:
                # The blank line may have begun at the end of the previous read.
                probe = self._tail + data[at : at + 3]
                end = _blank_line_end(probe, 0, len(probe))
                if end > len(self._tail):
                    cut = at + end - len(self._tail)
            if cut < 0:
                start = at
                if not self._begun and data[at] in b"\r\n":
                    # Blank lines before a request, which the parser skips: not its end.
                    start = stop - len(data[at:stop].lstrip(b"\r\n"))
                cut = _blank_line_end(data, start, stop)
            cut = stop if cut < 0 else min(cut, stop)
            self._head_bytes += cut - at
            self._remember_tail(data, at, cut)
            self._feed(view[at:cut])
            if cut == stop < len(data) and self._head_pending():
                if not (self._refused or self.transport.is_closing()):
                    # A long target was refused by on_url already (414) unless its own
                    # cap is above this one's.
                    self._refuse(HEAD_TOO_LARGE)
                return len(data)
            return cut

        def _feed_body(self, data: bytes, view: memoryview, at: int) -> int:
            """Feed the body from ``data[at:]``, no further than its end where that is
            known; where the feed stopped."""
            if self._content_length is not None and self._content_length > self._body_seen:
                cut = min(at + self._content_length - self._body_seen, len(data))
                self._feed(view[at:cut])
                return cut
            # A chunked body ends with a blank line ("0", trailers, CRLF) that only parsing
            # the chunks can tell from one inside the data. Fed at most max_head at a time,
            # a head that begins in the same piece stays under the cap; its bytes are those
            # after the piece's last blank line (which the pending head cannot contain).
            cut = min(at + self.door.max_head, len(data))
            messages = self._messages
            tail = self._tail
            self._remember_tail(data, at, cut)
            self._feed(view[at:cut])
            if self._messages != messages and self._head_pending():
                end = _blank_line_end(data, at, cut, last=True)
                if end < 0:  # the blank line began in the previous piece
                    probe = tail + data[at : at + 3]
                    end = at + max(_blank_line_end(probe, 0, len(probe)) - len(tail), 0)
                self._head_bytes = cut - end
            return cut

        def _remember_tail(self, data: bytes, at: int, cut: int) -> None:
            self._tail = data[cut - 3 : cut] if cut - at >= 3 else (self._tail + data[at:cut])[-3:]

        def _head_pending(self) -> bool:
            # A method, not the attribute: the parser's callbacks change it during a feed.
            return self._in_head

        def _feed(self, data: memoryview) -> None:
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                stopped = exc.__context__
                self._refuse(stopped.refused if isinstance(stopped, _Refused) else MALFORMED)
            except httptools.HttpParserError:
                self._refuse(MALFORMED)
            except httptools.HttpParserUpgrade:
                # Ollama's API has no upgrades; the request was handed to the app as is.
                self._unsupported_upgrade_warning()
            self._watch_body()

        # -- parser callbacks --------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True
            self._line_bytes = 0
            self._header_count = 0
            self._content_length = None
            self._body_seen = 0

        def on_url(self, url: bytes) -> None:
            self._line_bytes += len(url)
            if self._line_bytes > self.door.max_request_line:
                raise _Refused(LINE_TOO_LONG)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > self.door.max_headers:
                raise _Refused(TOO_MANY_HEADERS)
            if len(name) == 14 and name.lower() == b"content-length":
                # Where the body ends, so a feed can stop there (the parser has checked
                # the value is digits, and refuses it beside Transfer-Encoding).
                self._content_length = int(value)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._body_started = self._body_last = self.loop.time()
            self._body_bytes = 0
            scope = self.scope
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is scope:
                # Bound to this request's cycle: a pipelined request replaces self.cycle
                # while the one before it is still being answered.
                scope["extensions"] = {
                    FRONT_DOOR: {
                        ON_DISCONNECT: _DisconnectHook(self, cycle),
                        BODY_GRACE: self.door.body_grace,
                    }
                }

        def on_body(self, body: bytes) -> None:
            self._body_last = self.loop.time()
            self._body_bytes += len(body)
            self._body_seen += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            # What follows is the next request's head; it counts from here.
            self._in_head = True
            self._begun = False
            self._head_bytes = 0
            self._messages += 1
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline:
                self._arm_head_timer()

        # -- timers ------------------------------------------------------------------------

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            waiting.pop(self, None)
            waiting[self] = None
            self._head_timer = self.loop.call_later(self.door.header_timeout, self._head_late)

        def _head_late(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            self._give_up()

        def _give_up(self, *, counting: bool = True) -> None:
            if self._head_bytes == 0:
                # An idle connection: close it quietly, as for an idle keep-alive.
                self._refused = True
                self._cancel_timers()
                self.transport.close()
            else:
                self._refuse(HEAD_TIMEOUT, counting=counting)

        def _watch_body(self) -> None:
            if self._in_head or self._body_timer is not None or self._refused:
                return
            if self.cycle is None or self.cycle.response_complete:
                return
            self._body_timer = self.loop.call_at(self._body_deadline(), self._body_late)

        def _body_deadline(self) -> float:
            # The whole body at the minimum rate after a grace, and no gap longer than the
            # grace between two pieces (the app relies on both: BODY_GRACE in asgi.py).
            door = self.door
            whole = self._body_started + door.body_grace + self._body_bytes / door.body_min_rate
            return min(whole, self._body_last + door.body_grace)

        def _body_late(self) -> None:
            self._body_timer = None
            if self._in_head or self.transport.is_closing():
                return
            if self.flow.read_paused:
                # The app, not the client, is slow to take the body (flow control): the
                # client is not trickling. Count afresh from now.
                self._body_started = self._body_last = self.loop.time()
                self._body_bytes = 0
            if self.loop.time() < self._body_deadline():
                self._body_timer = self.loop.call_at(self._body_deadline(), self._body_late)
                return
            cycle = self.cycle
            if cycle is not None and cycle.response_started:
                counted.add(BODY_TIMEOUT, self.loop)
                self._refused = True
                self.transport.close()
            else:
                self._refuse(BODY_TIMEOUT)

    return FrontDoorProtocol
