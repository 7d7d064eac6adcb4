"""What a key may ask for: its models, its keep-alive, and the usage the proxy needs to see.

Ollama decodes request bodies with Go's encoding/json, which matches field names without
regard to case ("MODEL" sets model) and lets the last duplicate win. A check that read the
body differently could be walked around, so fields are found the same way here, and a body
this module cannot read is refused whenever a rule depends on what is in it.

``/v1/audio/transcriptions`` takes a multipart form instead (see multipart.py), and Go reads
its ``model`` from the query string too when the form has none. For a key limited to some
models the form is read, checked and rewritten; a query string or a form that cannot be read
without ambiguity is refused, never forwarded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ondemand.asgi import compact_json
from ondemand.errors import ConfigError
from ondemand.modelnames import canonical
from ondemand.proxy import multipart
from ondemand.proxy.auth import Identity

# Routes whose JSON body names the model it uses.
MODEL_ROUTES = frozenset(
    {
        "/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show",
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
        "/v1/messages",
    }
)  # fmt: skip
# The one route whose body is a form (multipart/form-data), not JSON.
FORM_ROUTE = "/v1/audio/transcriptions"
KEEP_ALIVE_ROUTES = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
# /v1 streams report usage only when asked: the proxy asks, and hides the answer again.
USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
LIST_ROUTES = frozenset({"/api/tags", "/api/ps", "/v1/models"})

_GO_DURATION = re.compile(r"^[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}  # fmt: skip
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class Rejected(Exception):
    """The proxy answers the request itself with ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def keep_alive_seconds(value: object) -> float | None:
    """Seconds a ``keep_alive`` value keeps a model loaded: ``inf`` for forever (any
    negative), ``None`` when Ollama would refuse it (it then answers 400 itself)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if math.isnan(value):
            return None
        return math.inf if value < 0 else float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text == "0":
        return 0.0
    if not _GO_DURATION.match(text):
        return None  # e.g. "-1" or "300": no unit, which Ollama rejects with a 400
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    return math.inf if text.startswith("-") and seconds > 0 else seconds


def keep_alive_setting(name: str, raw: str) -> tuple[str | int, float]:
    """An ``ONDEMAND_*KEEP_ALIVE`` value: what to send (seconds as a number, durations as a
    string, as Ollama accepts them) and how many seconds it means."""
    text = raw.strip()
    value: str | int = int(text) if re.fullmatch(r"-?\d+", text) else text
    seconds = keep_alive_seconds(value)
    if seconds is None:
        raise ConfigError(
            f"{name} must be a duration like 10m or 1h, or seconds, got {raw!r}",
            hint="use Ollama's format: 30m, 2h, 300 (seconds), -1 (forever)",
        )
    return value, seconds


@dataclass(frozen=True, slots=True)
class KeepAlivePolicy:
    default: str | int | None = None  # sent when the client sent none
    cap: str | int | None = None  # sent instead of anything longer
    cap_seconds: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KeepAlivePolicy:
        default: str | int | None = None
        default_seconds: float | None = None
        cap: str | int | None = None
        cap_seconds: float | None = None
        if env.get("ONDEMAND_MAX_KEEP_ALIVE", "").strip():
            cap, cap_seconds = keep_alive_setting(
                "ONDEMAND_MAX_KEEP_ALIVE", env["ONDEMAND_MAX_KEEP_ALIVE"]
            )
            if math.isinf(cap_seconds):
                raise ConfigError(
                    "ONDEMAND_MAX_KEEP_ALIVE cannot be forever: it is the cap on keep_alive",
                    hint="give a duration such as 30m, or unset it",
                )
        if env.get("ONDEMAND_KEEP_ALIVE", "").strip():
            default, default_seconds = keep_alive_setting(
                "ONDEMAND_KEEP_ALIVE", env["ONDEMAND_KEEP_ALIVE"]
            )
            if cap_seconds is not None and default_seconds > cap_seconds:
                default = cap
        return cls(default, cap, cap_seconds)

    @property
    def active(self) -> bool:
        return self.default is not None or self.cap is not None


def _fields(body: Mapping[str, Any], name: str) -> list[str]:
    """The keys Go's decoder would read as ``name``, in document order."""
    return [key for key in body if key.lower() == name]


def _last(body: Mapping[str, Any], name: str) -> Any:
    keys = _fields(body, name)
    return body[keys[-1]] if keys else None


def _replace(body: dict[str, Any], name: str, value: Any) -> None:
    for key in _fields(body, name):
        del body[key]
    body[name] = value


@dataclass(frozen=True, slots=True)
class Residency:
    """The models the server preloaded and the ``keep_alive`` it loaded them with. A key
    that is not an admin key cannot change how long these stay loaded: every ``keep_alive``
    it sends for them, shorter (``0`` unloads at once) or longer, becomes this one."""

    models: frozenset[str]  # canonical names
    keep_alive: str | int


@dataclass(slots=True)
class Prepared:
    body: bytes
    model: str | None  # as the client wrote it, for logs and metrics
    stream: bool
    strip_usage: bool = False
    content_type: str | None = None  # replaces the client's, when the body was rewritten


def allowed(identity: Identity, model: str) -> bool:
    models = identity.entry.models if identity.entry is not None else None
    return models is None or canonical(model) in models


def _forbidden(model: str) -> Rejected:
    return Rejected(403, f"model {model!r} is not allowed for this key")


def _unreadable(why: str) -> Rejected:
    return Rejected(
        403, f"this key may use only some models, and this request's model cannot be read: {why}"
    )


def prepare(
    path: str,
    raw: bytes,
    identity: Identity,
    keep_alive: KeepAlivePolicy,
    *,
    residency: Residency | None = None,
    content_type: str | None = None,
    content_encoding: str | None = None,
    query: bytes = b"",
) -> Prepared:
    """Check a request body against the key's models and rewrite what policy asks for.

    A header given as None is absent; as "" it was sent more than once.
    """
    default_stream = not path.startswith("/v1/")
    restricted = identity.entry is not None and identity.entry.models is not None
    if path == FORM_ROUTE:
        if not restricted:
            return Prepared(raw, None, False)
        return _prepare_form(raw, identity, content_type, query)
    if path not in MODEL_ROUTES:
        return Prepared(raw, None, default_stream)
    pinning = residency is not None and not identity.admin and path in KEEP_ALIVE_ROUTES
    must_read = restricted or pinning or (keep_alive.active and path in KEEP_ALIVE_ROUTES)
    if restricted and content_encoding is not None and content_encoding.lower() != "identity":
        # Ollama inflates zstd bodies on /v1/responses; the proxy does not read them.
        raise _unreadable("the body is compressed; send it uncompressed")
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # nesting deeper than Python's stack: unreadable
        body = None
    if not isinstance(body, dict):
        if must_read:
            raise Rejected(400, "the request body must be a JSON object")
        return Prepared(raw, None, default_stream)
    names = [body[k] for k in _fields(body, "model")]
    if path == "/api/show":
        names += [body[k] for k in _fields(body, "name")]
    if restricted:
        for name in names:
            if not isinstance(name, str):
                raise Rejected(400, "'model' must be a string")
            if name and not allowed(identity, name):
                raise _forbidden(name)
    model = next((n for n in reversed(names) if isinstance(n, str) and n), None)
    if restricted and model is None:
        # Default deny: a key limited to some models may not send a request whose model
        # the proxy cannot name, whatever Ollama would make of it.
        raise Rejected(403, "this key is limited to some models, and the request names none")
    stream_value = _last(body, "stream")
    stream = default_stream if stream_value is None else stream_value is True
    changed = False
    if pinning and residency is not None and _names_any(names, residency.models):
        changed = _pin_keep_alive(body, residency.keep_alive)
    elif path in KEEP_ALIVE_ROUTES:
        changed = _govern_keep_alive(body, keep_alive)
    strip_usage = False
    if path in USAGE_ROUTES and stream:
        options = _last(body, "stream_options")
        if not (isinstance(options, dict) and _last(options, "include_usage") is True):
            merged = dict(options) if isinstance(options, dict) else {}
            _replace(merged, "include_usage", True)
            _replace(body, "stream_options", merged)
            strip_usage = changed = True
    out = compact_json(body) if changed else raw
    return Prepared(out, model, stream, strip_usage)


def _prepare_form(
    raw: bytes, identity: Identity, content_type: str | None, query: bytes
) -> Prepared:
    """A transcription form for a restricted key: one ``model`` field, allowed, and the
    form rewritten so that it is the only one Ollama can read."""
    if query:
        raise _unreadable("Ollama also reads 'model' from the query string; send none")
    if not content_type:
        raise _unreadable("the body must be multipart/form-data, with one Content-Type")
    try:
        parts = multipart.parse_form(raw, content_type)
    except multipart.FormRefused as exc:
        raise _unreadable(str(exc)) from None
    fields = [p for p in parts if p.name.lower() == "model"]
    if not fields:
        raise Rejected(400, "the form has no 'model' field")
    if len(fields) > 1 or fields[0].name != "model" or fields[0].filename is not None:
        raise _unreadable("the form must have exactly one 'model' field, not a file")
    try:
        model = fields[0].data.decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable("the 'model' field is not UTF-8") from None
    if not allowed(identity, model):
        raise _forbidden(model)
    body, new_type = multipart.write_form(parts)
    return Prepared(body, model, False, content_type=new_type)


def _names_any(names: list[Any], models: frozenset[str]) -> bool:
    return any(isinstance(n, str) and canonical(n) in models for n in names)


def _pin_keep_alive(body: dict[str, Any], value: str | int) -> bool:
    """Every spelling of ``keep_alive`` becomes the server's ``value``; sent even when the
    client sent none, so that a model Ollama had dropped comes back for as long as the
    server keeps it, not for Ollama's default five minutes."""
    keys = _fields(body, "keep_alive")
    if (
        keys == ["keep_alive"]
        and body["keep_alive"] == value
        and type(body["keep_alive"]) is type(value)
    ):
        return False
    _replace(body, "keep_alive", value)
    return True


def _govern_keep_alive(body: dict[str, Any], policy: KeepAlivePolicy) -> bool:
    """Inject the default where none was sent; cap anything longer than the cap."""
    if not policy.active:
        return False
    keys = _fields(body, "keep_alive")
    if not keys:
        if policy.default is None:
            return False
        body["keep_alive"] = policy.default
        return True
    if policy.cap_seconds is None:
        return False
    # Which variant Go ends up with depends on document order that a dict does not keep
    # (a repeated key keeps its first place), so any variant over the cap caps them all.
    cap = policy.cap_seconds
    over = [s for s in (keep_alive_seconds(body[k]) for k in keys) if s is not None and s > cap]
    if not over:
        return False  # within the cap, or refused by Ollama anyway
    _replace(body, "keep_alive", policy.cap)
    return True


def check_path_model(path: str, identity: Identity) -> None:
    """``/v1/models/{model}`` names its model in the path."""
    if path.startswith("/v1/models/"):
        model = path.removeprefix("/v1/models/")
        if not allowed(identity, model):
            raise _forbidden(model)


def filter_listing(path: str, raw: bytes, identity: Identity) -> bytes:
    """The model lists a restricted key sees: only its own models."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if not isinstance(body, dict):
        return raw
    field, name_keys = ("data", ("id",)) if path == "/v1/models" else ("models", ("model", "name"))
    items = body.get(field)
    if not isinstance(items, list):
        return raw

    def keep(item: object) -> bool:
        if not isinstance(item, dict):
            return False
        name = next((item[k] for k in name_keys if isinstance(item.get(k), str)), None)
        return name is not None and allowed(identity, name)

    body[field] = [item for item in items if keep(item)]
    return compact_json(body)
