"""When the proxy was last used: the time of the last real request and uptime.

Ollama has no in-flight counter, so an idle decision needs the proxy's (``Limits``, which
takes a slot per forwarded request). Only forwarded requests count: health probes, status
and metrics reads are not activity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime


class Activity:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.total = 0
        self.started_at = clock()
        self.last: float | None = None
        # Set by `serve`: warming until the models are ready, then when that happened.
        self.warming = False
        self.ready_at: float | None = None

    def begin(self) -> None:
        self.total += 1
        self.last = self.clock()

    def end(self) -> None:
        # A long stream is activity until it ends, so the idle clock starts from its end.
        self.last = self.clock()

    def mark_ready(self, ready: bool) -> None:
        self.warming = not ready
        if ready and self.ready_at is None:
            self.ready_at = self.clock()
        elif not ready:
            self.ready_at = None

    def snapshot(self, inflight: int) -> dict[str, object]:
        now = self.clock()
        last = self.last
        return {
            "inflight": inflight,
            "requests": self.total,
            "uptime_seconds": round(now - self.started_at, 3),
            "last_request_at": None if last is None else iso_utc(last),
            "idle_seconds": None if last is None or inflight else round(now - last, 3),
        }


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
