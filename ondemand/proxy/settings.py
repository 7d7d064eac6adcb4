"""Proxy settings, read once from the environment at start-up."""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ondemand.errors import ConfigError
from ondemand.frontdoor import DoorLimits
from ondemand.proxy.auth import KeyStore, keystore_from_env
from ondemand.proxy.policy import KeepAlivePolicy

if TYPE_CHECKING:
    from ondemand.proxy.webhook import WebhookSettings

DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"
_SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
# Single letters are binary, as in nginx's client_max_body_size ("64m" is 64 MiB).
_FACTORS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes from ``67108864``, ``64MiB``, ``64MB``, ``64m``."""
    match = _SIZE.match(text)
    factor = _FACTORS.get(match.group(2).lower()) if match else None
    if match is None or factor is None:
        raise ValueError(f"invalid size {text!r}: use bytes or a unit, like 64MiB or 10MB")
    return int(match.group(1)) * factor


def normalise_upstream(value: str) -> str:
    """A base URL from ``host:port``, ``:port`` or a URL, as OLLAMA_HOST is written."""
    value = value.strip().rstrip("/")
    if not value:
        return DEFAULT_UPSTREAM
    if "://" not in value:
        value = "http://" + value
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https"):
        raise ConfigError(f"the upstream {value!r} must be an http:// or https:// URL")
    host = rest.split("/", 1)[0]
    if host.startswith(":"):
        rest = "127.0.0.1" + rest
    elif host.startswith("0.0.0.0"):
        rest = "127.0.0.1" + rest[len("0.0.0.0") :]
    return f"{scheme}://{rest}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _positive(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number ≥ 1, got {raw!r}")
    return int(raw)


def _origins(raw: str) -> frozenset[str]:
    """``ONDEMAND_CORS_ORIGINS``: exact origins (scheme://host[:port]) or ``*``."""
    origins = frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins - {"*"}:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"ONDEMAND_CORS_ORIGINS: {origin!r} is not an origin",
                hint="list origins like https://app.example.com or http://localhost:5173",
            )
    return origins


def scaled_clock(scale: float) -> Callable[[], float]:
    """``time.time`` when ``scale`` is 1; else a clock that starts now and runs ``scale``
    times faster."""
    if scale == 1.0:
        return time.time
    origin = time.time()

    def clock() -> float:
        return origin + (time.time() - origin) * scale

    return clock


def replica_name(env: Mapping[str, str]) -> str:
    """``ONDEMAND_REPLICA_ID``, else the host name (a replica's pod name) and a token of
    this process: a replica that restarted, with an empty memory, is a new replica."""
    given = env.get("ONDEMAND_REPLICA_ID", "").strip()
    if given:
        return given[:100]
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "server"
    return f"{host}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    upstream: str
    keys: KeyStore
    max_body: int = DEFAULT_MAX_BODY
    # How long a client may stall between two pieces of its request body.
    body_timeout: float = 30.0
    connect_timeout: float = 10.0
    ping_timeout: float = 2.0
    log_json: bool = False
    log_level: str = "INFO"
    keep_alive: KeepAlivePolicy = field(default_factory=KeepAlivePolicy)
    max_inflight: int | None = None
    cors_origins: frozenset[str] = frozenset()
    webhook: WebhookSettings | None = None
    # Rehearsal only: the server's lease and idle clock runs this many times faster than
    # real time, so a day of CI replays against the sandbox in minutes (bench/cost.py).
    clock_scale: float = 1.0
    # Names this server among the replicas behind one URL (answered on /ondemand/*).
    replica_id: str = field(default_factory=lambda: replica_name({}))
    # Header, connection and body limits enforced before the app (ondemand/frontdoor.py).
    door: DoorLimits = field(default_factory=DoorLimits)
    # Kept to rebuild the key store when the keys file changes; holds secrets, so no repr.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, upstream: str | None = None) -> ProxySettings:
        raw_upstream = upstream or env.get("ONDEMAND_UPSTREAM") or DEFAULT_UPSTREAM
        max_body_raw = env.get("ONDEMAND_MAX_BODY", "").strip()
        try:
            max_body = parse_size(max_body_raw) if max_body_raw else DEFAULT_MAX_BODY
        except ValueError as exc:
            raise ConfigError(f"ONDEMAND_MAX_BODY: {exc}") from None
        level = (env.get("AUTHORIZATION_LOG_LEVEL") or "INFO").strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"}:
            raise ConfigError(
                f"AUTHORIZATION_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}"
            )
        from ondemand.proxy.webhook import WebhookSettings

        return cls(
            upstream=normalise_upstream(raw_upstream),
            keys=keystore_from_env(env),
            max_body=max_body,
            body_timeout=_float(env, "ONDEMAND_BODY_TIMEOUT", 30.0),
            connect_timeout=_float(env, "ONDEMAND_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            log_json=_truthy(env.get("AUTHORIZATION_LOG_JSON")),
            log_level="WARNING" if level == "WARN" else level,
            keep_alive=KeepAlivePolicy.from_env(env),
            max_inflight=_positive(env, "ONDEMAND_MAX_INFLIGHT"),
            cors_origins=_origins(env.get("ONDEMAND_CORS_ORIGINS", "")),
            webhook=WebhookSettings.from_env(env),
            clock_scale=_float(env, "ONDEMAND_CLOCK_SCALE", 1.0),
            replica_id=replica_name(env),
            door=DoorLimits.from_env(env),
            env=dict(env),
        )
