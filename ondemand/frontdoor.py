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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_HEAD = 32 * 1024
DEFAULT_MAX_REQUEST_LINE = 8 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_BODY_GRACE = 30.0
DEFAULT_BODY_MIN_RATE = 1024
DEFAULT_MAX_CONNECTIONS = 1000


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
    # Open connections at once, idle ones included; beyond it 503 and close.
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DoorLimits:
        from ondemand.envvalues import Env

        read = Env(env)
        size, count, seconds = read.size, read.count, read.seconds

        return cls(
            max_head=size("ONDEMAND_MAX_HEADER_SIZE", DEFAULT_MAX_HEAD),
            max_request_line=size("ONDEMAND_MAX_REQUEST_LINE", DEFAULT_MAX_REQUEST_LINE),
            max_headers=count("ONDEMAND_MAX_HEADERS", DEFAULT_MAX_HEADERS),
            header_timeout=seconds("ONDEMAND_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            body_grace=seconds("ONDEMAND_BODY_TIMEOUT", DEFAULT_BODY_GRACE),
            body_min_rate=size("ONDEMAND_BODY_MIN_RATE", DEFAULT_BODY_MIN_RATE),
            max_connections=count("ONDEMAND_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
        )


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def refusal(status: int, message: str, extra: bytes = b"") -> bytes:
    """A whole response that ends the connection; JSON, as Ollama's clients read errors."""
    body = json.dumps({"error": message}).encode()
    return (
        (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + body
    )


class _Refused(Exception):
    """Raised from a parser callback to stop httptools at once."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def protocol_class(limits: DoorLimits) -> type[Any]:
    """uvicorn's httptools protocol, with ``limits`` enforced before the parser works."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # The connections of this server waiting for a request's head, longest first: a dict
    # keeps insertion order, so finding the one to evict and moving one are both O(1).
    waiting: dict[FrontDoorProtocol, None] = {}

    class FrontDoorProtocol(HttpToolsProtocol):
        door = limits

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._line_bytes = 0
            self._header_count = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None
            self._body_started = 0.0
            self._body_bytes = 0
            self._refused = False

        # -- connection --------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()
            if len(self.connections) > self.door.max_connections and not self._evict_one():
                # Every connection is busy with a request: refused before a byte is read,
                # so a flood cannot grow memory or hold sockets. The answer waits in the
                # client's buffer for its request.
                self._refuse(503, "too many connections; retry shortly", b"retry-after: 1\r\n")

        def _evict_one(self) -> bool:
            """Make room by closing the connection that has waited longest for a request
            (an idle keep-alive, a slow head), never one whose request is being served: a
            flood of idle or slow connections cannot lock out clients that send requests."""
            for victim in waiting:  # oldest first
                if victim is not self:
                    victim._give_up()
                    return True
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def _cancel_timers(self) -> None:
            waiting.pop(self, None)
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = None

        def _refuse(self, status: int, message: str, extra: bytes = b"") -> None:
            self._refused = True
            self._cancel_timers()
            if not self.transport.is_closing():
                self.transport.write(refusal(status, message, extra))
                self.transport.close()

        # -- bytes in ----------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if not self._in_head:
                self._feed(data)
                return
            room = self.door.max_head - self._head_bytes
            piece = data[:room]
            self._head_bytes += len(piece)
            self._feed(piece)
            if self._refused or self.transport.is_closing() or len(data) <= room:
                return
            if self._head_pending():
                # A long target was refused by on_url already (414) unless its own cap is
                # above this one's.
                self._refuse(431, "request header fields too large")
                return
            # The head ended inside the piece: the rest is body (or a pipelined request,
            # whose head counts from where the previous message ended).
            self.data_received(data[room:])

        def _head_pending(self) -> bool:
            # A method, not the attribute: the parser's callbacks change it during a feed.
            return self._in_head

        def _feed(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                refused = exc.__context__
                if isinstance(refused, _Refused):
                    self._refuse(refused.status, refused.message)
                else:
                    self._refuse(400, "invalid HTTP request")
            except httptools.HttpParserError:
                self._refuse(400, "invalid HTTP request")
            except httptools.HttpParserUpgrade:
                # Ollama's API has no upgrades; the request was handed to the app as is.
                self._unsupported_upgrade_warning()
            self._watch_body()

        # -- parser callbacks --------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._line_bytes = 0
            self._header_count = 0

        def on_url(self, url: bytes) -> None:
            self._line_bytes += len(url)
            if self._line_bytes > self.door.max_request_line:
                raise _Refused(414, "request line too long")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > self.door.max_headers:
                raise _Refused(431, "too many header fields")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._body_started = self.loop.time()
            self._body_bytes = 0
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            # What follows is the next request's head; it counts from here.
            self._in_head = True
            self._head_bytes = 0
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

        def _give_up(self) -> None:
            if self._head_bytes == 0:
                # An idle connection: close it quietly, as for an idle keep-alive.
                self._refused = True
                self._cancel_timers()
                self.transport.close()
            else:
                self._refuse(408, "timed out reading the request headers")

        def _watch_body(self) -> None:
            if self._in_head or self._body_timer is not None or self._refused:
                return
            if self.cycle is None or self.cycle.response_complete:
                return
            self._body_timer = self.loop.call_at(self._body_deadline(), self._body_late)

        def _body_deadline(self) -> float:
            door = self.door
            return self._body_started + door.body_grace + self._body_bytes / door.body_min_rate

        def _body_late(self) -> None:
            self._body_timer = None
            if self._in_head or self.transport.is_closing():
                return
            if self.flow.read_paused:
                # The app, not the client, is slow to take the body (flow control): the
                # client is not trickling. Count afresh from now.
                self._body_started = self.loop.time()
                self._body_bytes = 0
            if self.loop.time() < self._body_deadline():
                self._body_timer = self.loop.call_at(self._body_deadline(), self._body_late)
                return
            cycle = self.cycle
            if cycle is not None and cycle.response_started:
                self._refused = True
                self.transport.close()
            else:
                self._refuse(408, "timed out reading the request body")

    return FrontDoorProtocol
