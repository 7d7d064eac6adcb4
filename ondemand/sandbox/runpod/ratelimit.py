"""REST v2's per-key rate limit: counted always, enforced when a quota is configured.

RunPod limits each API key per window and answers an excess with 429, a ``Retry-After``
header (seconds until the exceeded window resets), the ``RateLimit`` / ``RateLimit-Policy``
headers and a problem body naming the window (``runpod/docs``
``api-reference-v2/openapi.json`` at fed16bc, ``components.responses.TooManyRequestsError``:
example policy ``"minute";q=60;w=60``, detail "rate limit exceeded for the minute window").

The sandbox enforces nothing by default. ``RateLimiter(quota=60)`` enforces RunPod's example
quota; tests give it a shorter ``window`` or their own ``clock`` so that no test waits a
real minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ondemand.sandbox.http import HttpError


@dataclass
class _Window:
    index: int
    used: int


class RateLimiter:
    """A fixed window per key, as the spec's ``t`` (seconds until reset) describes."""

    def __init__(
        self,
        quota: int | None = None,
        *,
        window: float = 60.0,
        name: str = "minute",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quota = quota
        self.window = window
        self.name = name
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self.calls: dict[str, int] = {}  # every request per key, refused ones included
        self.refused: dict[str, int] = {}

    def admit(self, key: str) -> float | None:
        """Count a request of ``key``; None when admitted, else the seconds to wait."""
        now = self.clock()
        index = math.floor(now / self.window)
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            current = self._windows.get(key)
            if current is None or current.index != index:
                current = self._windows[key] = _Window(index, 0)
            if self.quota is None or current.used < self.quota:
                current.used += 1
                return None
            self.refused[key] = self.refused.get(key, 0) + 1
        return (index + 1) * self.window - now

    def refusal(self, key: str) -> HttpError | None:
        """Count a call of ``key``: the 429 to answer when it is over quota, else None."""
        wait = self.admit(key)
        if wait is None:
            return None
        seconds = max(1, math.ceil(wait))
        window = round(self.window)
        headers = [
            (b"retry-after", str(seconds).encode()),
            (b"ratelimit", f'"{self.name}";r=0;t={seconds}'.encode()),
            (b"ratelimit-policy", f'"{self.name}";q={self.quota};w={window}'.encode()),
        ]
        return HttpError(429, f"rate limit exceeded for the {self.name} window", headers=headers)

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())
