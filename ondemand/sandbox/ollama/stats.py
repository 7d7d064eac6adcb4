"""Counters and events the emulator keeps so tests and benchmarks can see what happened."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

MAX_EVENTS = 10_000


@dataclass
class Stats:
    """Everything ``GET /_emulator/stats`` reports.

    ``events`` keeps the latest 10,000 of: ``cancel`` (a client went away while its request
    was loading, generating or pulling; ``tokens_sent`` counts tokens or lines already
    produced), ``load``, ``unload`` and ``fault``. ``time`` is ``time.time()`` when the
    emulator saw it, so a benchmark can compare it with when it closed its connection.
    """

    requests: int = 0
    routes: collections.Counter[str] = field(default_factory=collections.Counter)
    active: int = 0
    """Generations and pulls in progress."""
    completed: int = 0
    cancelled: int = 0
    tokens: int = 0
    """Tokens (or progress lines) produced, including those of cancelled requests."""
    loads: int = 0
    unloads: int = 0
    pulls: int = 0
    faults: int = 0
    events: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_EVENTS)
    )

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"type": kind, "time": time.time(), **fields}
        self.events.append(record)
        return record

    def cancels(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "cancel"]

    def reset(self) -> None:
        fresh = Stats()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "routes": dict(self.routes),
            "active": self.active,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "tokens": self.tokens,
            "loads": self.loads,
            "unloads": self.unloads,
            "pulls": self.pulls,
            "faults": self.faults,
            "events": list(self.events),
        }
