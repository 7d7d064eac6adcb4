"""Settings of ``ondemand serve``, read once from the environment (the image's interface)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ondemand.errors import ConfigError
from ondemand.proxy.settings import ProxySettings
from ondemand.serve.models import preload_list
from ondemand.serve.preload import WarmPolicy
from ondemand.serve.supervisor import resolve_binary

DEFAULT_OLLAMA_PORT = 11434


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name} must be a port number (1-65535), got {raw!r}")
    return int(raw)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name} must be a whole number ≥ {minimum}, got {raw!r}")
    return int(raw)


def _duration(text: str, name: str) -> float:
    """A duration as the CLI writes it (``2m``): ONDEMAND_DRAIN_TIMEOUT is also 'down''s."""
    from ondemand.configtypes import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError:
        raise ConfigError(
            f"{name} must be a number of seconds or a duration like 90s or 2m, got {text!r}"
        ) from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip().removesuffix("s")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = _duration(env[name], name)
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {env[name]!r}")
    return value


def ollama_port(env: Mapping[str, str]) -> int:
    """The port of ``ONDEMAND_OLLAMA_HOST`` or ``OLLAMA_HOST``; the host is always loopback.

    The official image sets ``OLLAMA_HOST=0.0.0.0:11434``: taking only its port keeps Ollama
    unreachable except through the authenticating proxy.
    """
    for name in ("ONDEMAND_OLLAMA_HOST", "OLLAMA_HOST"):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        tail = raw.split("://", 1)[-1].rstrip("/")
        _, sep, port = tail.rpartition(":")
        if not sep:
            return DEFAULT_OLLAMA_PORT
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name} has no valid port: {raw!r}", hint="e.g. 127.0.0.1:11434")
        return int(port)
    return DEFAULT_OLLAMA_PORT


def keep_alive_value(raw: str) -> str | int:
    """What warm-up requests send as ``keep_alive``: seconds as a JSON number, else a
    duration string. Ollama refuses a unit-less string such as "-1" with a 400."""
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class ServeSettings:
    proxy: ProxySettings
    ollama_bin: str
    ollama_port: int
    models: tuple[str, ...]
    policy: WarmPolicy
    host: str = "0.0.0.0"
    port: int = 8080
    health_port: int = 8080
    drain_timeout: float = 25.0
    # How often /api/ps is asked whether the preloaded models are still loaded; 0: never.
    residency_interval: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServeSettings:
        binary = resolve_binary(env)
        if binary is None:
            configured = env.get("OLLAMA_BIN")
            where = f"OLLAMA_BIN={configured} is not an executable" if configured else "not on PATH"
            raise ConfigError(
                f"cannot find Ollama: {where}",
                cause="ondemand serve supervises a real Ollama; the server image ships one",
                hint="install Ollama, or set OLLAMA_BIN to its path",
            )
        port = _port(env, "PORT", 8080)
        o_port = ollama_port(env)
        health_port = _port(env, "PORT_HEALTH", port)
        if o_port in (port, health_port):
            raise ConfigError(
                f"Ollama's port {o_port} is also the proxy's port",
                hint="set ONDEMAND_OLLAMA_HOST=127.0.0.1:<another port>",
            )
        policy = WarmPolicy(
            keep_alive=keep_alive_value(env.get("ONDEMAND_KEEP_ALIVE") or "-1"),
            require_gpu=env.get("ONDEMAND_REQUIRE_GPU", "").strip().lower() in {"1", "true", "yes"},
            expected_gpu=env.get("ONDEMAND_GPU") or None,
            pull_concurrency=_int(env, "ONDEMAND_PULL_CONCURRENCY", 3),
            pull_retries=_int(env, "ONDEMAND_PULL_RETRIES", 3),
        )
        return cls(
            proxy=ProxySettings.from_env(env, upstream=f"http://127.0.0.1:{o_port}"),
            ollama_bin=binary,
            ollama_port=o_port,
            models=preload_list(env),
            policy=policy,
            host=env.get("HOST", "").strip() or "0.0.0.0",
            port=port,
            health_port=health_port,
            drain_timeout=_seconds(env, "ONDEMAND_DRAIN_TIMEOUT", 25.0),
            residency_interval=_seconds(env, "ONDEMAND_RESIDENCY_INTERVAL", 15.0),
        )
