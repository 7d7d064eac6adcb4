"""What the proxy has been doing: requests in flight and when the last real one arrived.

Ollama has no in-flight counter, so an idle decision needs this one. Only forwarded
requests count: health probes, status and metrics reads are not activity.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Activity:
    def __init__(self) -> None:
        self.inflight = 0
        self.total = 0
        self.started_at = time.time()
        self.last_request_at: float | None = None

    def begin(self) -> None:
        self.inflight += 1
        self.total += 1
        self.last_request_at = time.time()

    def end(self) -> None:
        self.inflight -= 1
        # A long stream is activity until it ends, so the idle clock starts from its end.
        self.last_request_at = time.time()

    def snapshot(self) -> dict[str, object]:
        now = time.time()
        last = self.last_request_at
        return {
            "inflight": self.inflight,
            "requests": self.total,
            "uptime_seconds": round(now - self.started_at, 3),
            "last_request_at": None if last is None else _iso(last),
            "idle_seconds": None if last is None or self.inflight else round(now - last, 3),
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
