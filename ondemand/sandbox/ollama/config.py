"""What the emulator pretends: models, speeds, store directory and injected faults."""

from __future__ import annotations

import dataclasses
import http
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ondemand.sandbox.ollama.durations import keep_alive_from_env
from ondemand.sandbox.ollama.names import display_name, name_key

ModelKind = Literal["text", "embedding"]

BUSY = "server busy, please try again.  maximum pending requests exceeded"
_DEFAULT_ERRORS = {
    499: "request canceled",
    500: "llama runner process has terminated: exit status 2",
    503: BUSY,
}
_THINKING_HINTS = ("qwen3", "deepseek-r1", "gpt-oss", "magistral", "think")
TEXT_SIZE = 2_019_393_189
EMBEDDING_SIZE = 274_302_450


def default_error(status: int) -> str:
    """The message real Ollama most often sends with ``status``."""
    if status in _DEFAULT_ERRORS:
        return _DEFAULT_ERRORS[status]
    try:
        return http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


@dataclass
class ModelSpec:
    """One model in the store. ``size`` is the on-disk size in bytes (None: typical for kind)."""

    kind: ModelKind = "text"
    thinking: bool = False
    size: int | None = None
    modified_at: float | None = None
    """Unix seconds; None means "when the emulator started". Sorts ``/api/tags``."""
    origin: str | None = None
    """The name the layers were pulled as; a copy keeps it, so it keeps the same digest."""

    @classmethod
    def for_name(cls, name: str) -> ModelSpec:
        """Guess the kind from the name, the way users recognise models."""
        low = name.lower()
        if "embed" in low:
            return cls(kind="embedding")
        return cls(thinking=any(hint in low for hint in _THINKING_HINTS))

    @property
    def byte_size(self) -> int:
        if self.size is not None:
            return self.size
        return EMBEDDING_SIZE if self.kind == "embedding" else TEXT_SIZE

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, name: str, data: object) -> ModelSpec:
        if data is None:
            return cls.for_name(name)
        if isinstance(data, str):
            return _spec_from_word(name, data)
        if not isinstance(data, dict):
            raise ValueError(f"model {name!r}: expected an object, a kind string or null")
        spec = cls.for_name(name)
        for key, value in data.items():
            if key not in _SPEC_TYPES:
                raise ValueError(f"model {name!r}: unknown field {key!r}")
            if not isinstance(value, _SPEC_TYPES[key]) or (
                isinstance(value, bool) and bool not in _SPEC_TYPES[key]
            ):
                raise ValueError(f"model {name!r}: {key} has the wrong type")
            setattr(spec, key, value)
        if spec.kind not in ("text", "embedding"):
            raise ValueError(f"model {name!r}: kind must be 'text' or 'embedding'")
        return spec


_SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "thinking": (bool,),
    "size": (int, type(None)),
    "modified_at": (int, float, type(None)),
    "origin": (str, type(None)),
}
_FAULT_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,),
    "times": (int,),
    "status": (int,),
    "error": (str, type(None)),
    "close_after_lines": (int, type(None)),
    "error_after_lines": (int, type(None)),
}


@dataclass
class Fault:
    """The next ``times`` requests whose path matches ``path`` misbehave.

    ``path`` is exact (``/api/chat``), a prefix ending in ``*`` (``/v1/*``) or ``*``.
    Without ``close_after_lines``/``error_after_lines`` the request is answered at once with
    ``status`` and the real error body (``error`` or the usual text for that status).
    ``close_after_lines=K``: the request runs, but the connection is closed after K streamed
    lines with no final line (a non-streamed answer is cut before its body).
    ``error_after_lines=K``: after K lines, one ``{"error": ...}`` line ends a 200 stream, as
    Ollama does for failures mid-generation.
    """

    path: str = "*"
    times: int = 1
    status: int = 503
    error: str | None = None
    close_after_lines: int | None = None
    error_after_lines: int | None = None

    @property
    def message(self) -> str:
        return self.error if self.error is not None else default_error(self.status)

    def matches(self, path: str) -> bool:
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


def _default_models() -> dict[str, ModelSpec]:
    return {
        "llama3.2:latest": ModelSpec(),
        "nomic-embed-text:latest": ModelSpec(kind="embedding"),
    }


@dataclass
class EmulatorConfig:
    """Mutable at runtime, in process or through ``POST /_emulator/config``."""

    models: dict[str, ModelSpec] = field(default_factory=_default_models)
    tokens_per_second: float = 100.0
    """Per stream; 0 streams as fast as the connection takes it."""
    ttft: float = 0.02
    """Seconds from request (after any load) to the first token."""
    load_time: float = 0.1
    """Seconds to load a model that is not in ``/api/ps`` yet."""
    response_tokens: int = 24
    pull_seconds: float = 0.5
    pull_fail: list[str] = field(default_factory=list)
    cpu_models: list[str] = field(default_factory=list)
    """Models reported with ``size_vram: 0``; the others are fully in VRAM."""
    version: str = "0.33.0"
    keep_alive: str = "5m"
    """``OLLAMA_KEEP_ALIVE``: a Go duration or whole seconds; negative means forever."""
    models_dir: Path | None = None
    context_length: int = 4096
    embedding_dimensions: int = 768
    faults: list[Fault] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EmulatorConfig:
        config = cls()
        raw = env.get("OLLAMA_EMULATOR_MODELS")
        if raw is not None:
            config.models = parse_model_list(raw)
        rate = _env_float(env, "OLLAMA_EMULATOR_TOKENS_PER_SECOND", config.tokens_per_second)
        config.tokens_per_second = max(0.0, rate)
        config.ttft = _env_float(env, "OLLAMA_EMULATOR_TTFT", config.ttft)
        config.load_time = _env_float(env, "OLLAMA_EMULATOR_LOAD_TIME", config.load_time)
        config.pull_seconds = _env_float(env, "OLLAMA_EMULATOR_PULL_SECONDS", config.pull_seconds)
        tokens = _env_float(env, "OLLAMA_EMULATOR_RESPONSE_TOKENS", config.response_tokens)
        config.response_tokens = max(0, int(tokens))
        config.pull_fail = _env_list(env.get("OLLAMA_EMULATOR_PULL_FAIL", ""))
        config.cpu_models = _env_list(env.get("OLLAMA_EMULATOR_CPU_MODELS", ""))
        config.version = _clean(env.get("OLLAMA_EMULATOR_VERSION", "")) or config.version
        config.keep_alive = _clean(env.get("OLLAMA_KEEP_ALIVE", "")) or config.keep_alive
        models_dir = _clean(env.get("OLLAMA_MODELS", ""))
        config.models_dir = Path(models_dir).expanduser() if models_dir else None
        faults = env.get("OLLAMA_EMULATOR_FAULTS", "").strip()
        if faults:
            # The same JSON as a "faults" patch to /_emulator/config, for an emulator started
            # as a child process (by `ondemand serve`) that a test cannot reach in time.
            try:
                config.faults = _convert("faults", json.loads(faults), config.faults)
            except ValueError as exc:
                raise ValueError(f"OLLAMA_EMULATOR_FAULTS: {exc}") from None
        return config

    @property
    def keep_alive_ns(self) -> int:
        return keep_alive_from_env(self.keep_alive)

    def take_fault(self, path: str) -> Fault | None:
        """Consume one use of the first fault that matches ``path``."""
        for fault in self.faults:
            if fault.times > 0 and fault.matches(path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return dataclasses.replace(fault)
        return None

    def runs_on_cpu(self, name: str) -> bool:
        return name_key(name) in {name_key(n) for n in self.cpu_models}

    def pull_fails(self, name: str) -> bool:
        return name_key(name) in {name_key(n) for n in self.pull_fail}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "models":
                value = {name: spec.to_json() for name, spec in value.items()}
            elif f.name == "faults":
                value = [dataclasses.asdict(fault) for fault in value]
            elif f.name == "models_dir":
                value = None if value is None else str(value)
            out[f.name] = value
        return out

    def patch(self, data: Mapping[str, Any]) -> None:
        """Apply a JSON patch; ValueError (nothing applied) when a field is unknown or mistyped."""
        updates: dict[str, Any] = {}
        types = {f.name: f for f in dataclasses.fields(self)}
        for key, value in data.items():
            if key not in types:
                raise ValueError(f"unknown config field {key!r}")
            updates[key] = _convert(key, value, getattr(self, key))
        for key, value in updates.items():
            setattr(self, key, value)


def parse_model_list(raw: str) -> dict[str, ModelSpec]:
    """``llama3.2,nomic-embed-text,bge-m3=embed,qwen3=think`` → specs keyed by display name."""
    models: dict[str, ModelSpec] = {}
    for item in _env_list(raw):
        name, _, word = item.partition("=")
        models[display_name(name.strip())] = _spec_from_word(name.strip(), word.strip())
    return models


def _spec_from_word(name: str, word: str) -> ModelSpec:
    spec = ModelSpec.for_name(name)
    word = word.lower()
    if word in ("embed", "embedding"):
        spec = ModelSpec(kind="embedding")
    elif word in ("text", "completion"):
        spec = ModelSpec()
    elif word in ("think", "thinking"):
        spec = ModelSpec(thinking=True)
    elif word:
        raise ValueError(f"model {name!r}: unknown kind {word!r} (use embed, text or think)")
    return spec


def _convert(key: str, value: Any, current: Any) -> Any:
    if key == "models":
        if isinstance(value, list):
            if not all(isinstance(n, str) for n in value):
                raise ValueError("models: expected names like 'llama3.2' or 'bge-m3=embed'")
            value = {n.partition("=")[0]: n.partition("=")[2] or None for n in value}
        if not isinstance(value, dict):
            raise ValueError("models: expected an object or a list of names")
        return {display_name(n): ModelSpec.from_json(n, spec) for n, spec in value.items()}
    if key == "faults":
        if not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
            raise ValueError("faults: expected a list of objects")
        for f in value:
            for key, item in f.items():
                if key not in _FAULT_TYPES:
                    raise ValueError(f"faults: unknown field {key!r}")
                if not isinstance(item, _FAULT_TYPES[key]) or isinstance(item, bool):
                    raise ValueError(f"faults: {key} has the wrong type")
        return [Fault(**f) for f in value]
    if key == "models_dir":
        if value is not None and not isinstance(value, str):
            raise ValueError("models_dir: expected a path string or null")
        return None if value is None else Path(value)
    if key in ("pull_fail", "cpu_models"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: expected a list of model names")
        return list(value)
    if isinstance(current, bool) or isinstance(value, bool):
        raise ValueError(f"{key}: unexpected boolean")
    if isinstance(current, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(current, int) and isinstance(value, int):
        return value
    if isinstance(current, str) and isinstance(value, str):
        return value
    raise ValueError(f"{key}: expected {type(current).__name__}")


def _clean(value: str) -> str:
    return value.strip().strip("\"'")


def _env_list(raw: str) -> list[str]:
    return [item.strip() for item in _clean(raw).split(",") if item.strip()]


def _env_float(env: Mapping[str, str], key: str, default: float) -> float:
    value = _clean(env.get(key, ""))
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        return default
