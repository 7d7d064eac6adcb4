"""Settings of ``ondemand serve``, read once from the environment (the image's interface)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ondemand.envvalues import Env
from ondemand.errors import ConfigError
from ondemand.ollamahost import DEFAULT_PORT, parse_ollama_host
from ondemand.proxy.policy import keep_alive_setting
from ondemand.proxy.settings import ProxySettings
from ondemand.serve.models import preload_list
from ondemand.serve.preload import WarmPolicy
from ondemand.serve.supervisor import resolve_binary


def ollama_port(env: Mapping[str, str]) -> int:
    """The port of ``ONDEMAND_OLLAMA_HOST`` or ``OLLAMA_HOST``, read by Ollama's rules
    (``::1`` is a host, not port 1); the host is always loopback.

    The official image sets ``OLLAMA_HOST=0.0.0.0:11434``: taking only its port keeps Ollama
    unreachable except through the authenticating proxy.
    """
    for name in ("ONDEMAND_OLLAMA_HOST", "OLLAMA_HOST"):
        raw = env.get(name, "").strip()
        if not raw:
            continue
        where = parse_ollama_host(raw)
        # Ollama would fall back to its default port; the server would then proxy to a
        # port nobody chose, so it stops here. Port 0 would let Ollama pick one unknown.
        if where.bad_port is not None or where.port == 0:
            raise ConfigError(f"{name} has no valid port (1-65535)", hint="e.g. 127.0.0.1:11434")
        return where.port
    return DEFAULT_PORT


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
    # The server's own backstops (selfstop.py); None: off. 0 also means off.
    idle_stop: float | None = None
    max_lifetime: float | None = None
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
        read = Env(env)
        port = read.port("PORT", 8080)
        o_port = ollama_port(env)
        health_port = read.port("PORT_HEALTH", port)
        if o_port in (port, health_port):
            raise ConfigError(
                f"Ollama's port {o_port} is also the proxy's port",
                hint="set ONDEMAND_OLLAMA_HOST=127.0.0.1:<another port>",
            )
        # The warm-up requests' keep_alive: forever unless set, in Ollama's format.
        keep_alive, _ = keep_alive_setting(
            "ONDEMAND_KEEP_ALIVE", read.text("ONDEMAND_KEEP_ALIVE", "-1")
        )
        policy = WarmPolicy(
            keep_alive=keep_alive,
            require_gpu=read.flag("ONDEMAND_REQUIRE_GPU"),
            expected_gpu=read.text("ONDEMAND_GPU") or None,
            pull_concurrency=read.count("ONDEMAND_PULL_CONCURRENCY", 3),
            pull_retries=read.count("ONDEMAND_PULL_RETRIES", 3),
        )
        return cls(
            proxy=ProxySettings.from_env(env, upstream=f"http://127.0.0.1:{o_port}"),
            ollama_bin=binary,
            ollama_port=o_port,
            models=preload_list(env),
            policy=policy,
            host=read.text("HOST", "0.0.0.0"),
            port=port,
            health_port=health_port,
            drain_timeout=read.seconds("ONDEMAND_DRAIN_TIMEOUT", 25.0, zero=True),
            idle_stop=read.optional_seconds("ONDEMAND_IDLE_STOP", zero=True) or None,
            max_lifetime=read.optional_seconds("ONDEMAND_MAX_LIFETIME", zero=True) or None,
            residency_interval=read.seconds("ONDEMAND_RESIDENCY_INTERVAL", 15.0, zero=True),
        )
