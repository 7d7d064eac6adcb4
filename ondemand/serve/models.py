"""The preload list and what happened to each model in it."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ondemand.modelnames import canonical

_VAR = re.compile(r"^PRELOAD_MODEL_[A-Za-z0-9_]+$")


def preload_list(env: Mapping[str, str]) -> tuple[str, ...]:
    """``OLLAMA_PRELOAD_MODELS`` (comma-separated), then every ``PRELOAD_MODEL_*`` by name.

    Duplicates (in any spelling) are dropped; the first spelling is kept for messages.
    """
    raw = [m for m in env.get("OLLAMA_PRELOAD_MODELS", "").replace("\n", ",").split(",")]
    raw += [env[var] for var in sorted(env) if _VAR.match(var)]
    seen: dict[str, str] = {}
    for name in (m.strip() for m in raw):
        if name and canonical(name) not in seen:
            seen[canonical(name)] = name
    return tuple(seen.values())


class Phase(enum.Enum):
    PENDING = "pending"
    PULLING = "pulling"
    LOADING = "loading"
    WARM = "warm"
    UNLOADED = "unloaded"  # warm before; Ollama let it go after a finite ONDEMAND_KEEP_ALIVE
    FAILED = "failed"


@dataclass
class ModelState:
    name: str
    phase: Phase = Phase.PENDING
    kind: str | None = None  # "text" or "embedding", once known
    progress: float | None = None  # 0..1 while pulling
    cached: bool | None = None  # was it in the store before this start?
    size: int | None = None
    size_vram: int | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # pull/load durations

    @property
    def key(self) -> str:
        return canonical(self.name)

    @property
    def on_gpu(self) -> bool | None:
        if self.size is None or self.size_vram is None:
            return None
        return self.size > 0 and self.size_vram >= 0.9 * self.size

    def view(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "phase": self.phase.value}
        for key in ("kind", "cached", "size", "size_vram", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.progress is not None and self.phase is Phase.PULLING:
            out["progress"] = round(self.progress, 3)
        if self.on_gpu is not None:
            out["on_gpu"] = self.on_gpu
        if self.seconds:
            out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return out
