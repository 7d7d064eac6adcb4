"""Proxy settings, read once from the environment at start-up."""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ondemand.envvalues import Env
from ondemand.errors import ConfigError
from ondemand.frontdoor import DoorLimits
from ondemand.ollamahost import parse_ollama_host
from ondemand.proxy.auth import KeyStore, keystore_from_env
from ondemand.proxy.policy import KeepAlivePolicy

if TYPE_CHECKING:
    from ondemand.proxy.webhook import WebhookSettings

DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_UPSTREAM = "http://127.0.0.1:11434"


def normalise_upstream(value: str, name: str = "ONDEMAND_UPSTREAM") -> str:
    """A base URL from what ``OLLAMA_HOST`` accepts (``host:port``, ``:port``, a URL), read
    by Ollama's own rules; an address that means "every interface" is dialled as loopback."""
    if not value.strip():
        return DEFAULT_UPSTREAM
    where = parse_ollama_host(value)
    if where.scheme not in ("http", "https"):
        raise ConfigError(f"{name} must be an http:// or https:// URL or host:port")
    if where.bad_port is not None:
        # Not echoed: in "user:secret@host" the "port" would be the password.
        raise ConfigError(
            f"{name} has no valid port", hint="write host:port with a port in 0-65535, or a URL"
        )
    return where.url


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


MAX_WORKERS = 64


def _workers(count: int) -> int:
    # Each is a Python process of ~32 MiB: a typo must not start a thousand of them.
    if count > MAX_WORKERS:
        raise ConfigError(
            f"ONDEMAND_PROXY_WORKERS must be at most {MAX_WORKERS}, got {count}",
            hint="one process per core the proxy may use; 2 to 4 is plenty for most hosts",
        )
    return count


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
    # Processes serving the port: the main one and workers (ondemand/proxy/worker.py).
    workers: int = 1
    # Kept to rebuild the key store when the keys file changes; holds secrets, so no repr.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, upstream: str | None = None) -> ProxySettings:
        read = Env(env)
        level = read.text("AUTHORIZATION_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"}:
            raise ConfigError(
                f"AUTHORIZATION_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}"
            )
        from ondemand.proxy.webhook import WebhookSettings

        return cls(
            upstream=normalise_upstream(upstream or read.text("ONDEMAND_UPSTREAM")),
            keys=keystore_from_env(env),
            max_body=read.size("ONDEMAND_MAX_BODY", DEFAULT_MAX_BODY),
            body_timeout=read.seconds("ONDEMAND_BODY_TIMEOUT", 30.0),
            connect_timeout=read.seconds("ONDEMAND_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            log_json=read.flag("AUTHORIZATION_LOG_JSON"),
            log_level="WARNING" if level == "WARN" else level,
            keep_alive=KeepAlivePolicy.from_env(env),
            max_inflight=read.optional_count("ONDEMAND_MAX_INFLIGHT"),
            cors_origins=_origins(read.text("ONDEMAND_CORS_ORIGINS")),
            webhook=WebhookSettings.from_env(env),
            clock_scale=read.factor("ONDEMAND_CLOCK_SCALE", 1.0),
            replica_id=replica_name(env),
            door=DoorLimits.from_env(env),
            workers=_workers(read.count("ONDEMAND_PROXY_WORKERS", 1)),
            env=dict(env),
        )
