"""Per-key and global limits, answered with 429 and Retry-After.

RunPod's load balancer has no queue, and Ollama queues quietly until its slots free up:
a clear 429 lets a client back off instead of waiting blind. Checks and counting happen in
one synchronous step, so concurrent requests in the event loop cannot race past a limit.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ondemand.proxy.auth import Identity

WINDOW = 60.0  # rpm counts the requests of the last minute


@dataclass(frozen=True, slots=True)
class Limited:
    message: str
    retry_after: int  # seconds
    limit: str  # "inflight", "concurrency" or "rpm", for metrics


class Limits:
    def __init__(self, max_inflight: int | None = None) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.per_key: dict[str, int] = {}
        self.windows: dict[str, deque[float]] = {}

    def acquire(self, identity: Identity, now: float) -> Limited | None:
        """Take a slot for this request, or say which limit refuses it."""
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            return Limited(
                f"the server is at its limit of {self.max_inflight} requests in flight", 1,
                "inflight",
            )  # fmt: skip
        entry = identity.entry
        name = identity.name
        concurrency = entry.max_concurrency if entry is not None else None
        if concurrency is not None and self.per_key.get(name, 0) >= concurrency:
            return Limited(f"this key allows {concurrency} requests at once", 1, "concurrency")
        window: deque[float] | None = None
        if entry is not None and entry.rpm is not None:
            window = self.windows.setdefault(name, deque())
            while window and window[0] <= now - WINDOW:
                window.popleft()
            if len(window) >= entry.rpm:
                wait = max(1, math.ceil(window[0] + WINDOW - now))
                return Limited(f"this key allows {entry.rpm} requests per minute", wait, "rpm")
        self.inflight += 1
        self.per_key[name] = self.per_key.get(name, 0) + 1
        if window is not None:
            window.append(now)
        return None

    def release(self, identity: Identity) -> None:
        self.inflight -= 1
        left = self.per_key.get(identity.name, 1) - 1
        if left:
            self.per_key[identity.name] = left
        else:
            self.per_key.pop(identity.name, None)
