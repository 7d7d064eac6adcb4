"""Everything the route handlers share: config, store, loaded models, stats, clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ondemand.sandbox.ollama.durations import Clock
from ondemand.sandbox.ollama.residency import Residency
from ondemand.sandbox.ollama.stats import Stats
from ondemand.sandbox.ollama.store import ModelStore

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.ollama.config import EmulatorConfig, Fault


class State:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.store = ModelStore(config)
        self.residency = Residency(config, self.stats)
        self.clock = Clock()
        self.blobs: set[str] = set()
        self._ids = itertools.count()

    def next_id(self) -> int:
        """OpenAI ids are ``chatcmpl-<n>``/``cmpl-<n>`` with n below 999, as Ollama makes them."""
        return next(self._ids) % 999


@dataclass(slots=True)
class Call:
    """One HTTP request as the handlers see it."""

    scope: Scope
    receive: Receive
    send: Send
    method: str
    path: str
    body: bytes = b""
    fault: Fault | None = None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def route(self) -> str:
        return self.path
