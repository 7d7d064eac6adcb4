"""``OLLAMA_HOST`` as Ollama reads it, and an ``ollama`` executable that runs the emulator."""

from __future__ import annotations

import ipaddress
import shlex
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 11434


@dataclass(frozen=True, slots=True)
class HostPort:
    scheme: str
    host: str
    """Empty means every interface (``OLLAMA_HOST=:11434``)."""
    port: int

    @property
    def bind_host(self) -> str:
        return self.host or "0.0.0.0"

    @property
    def client_url(self) -> str:
        """Where a local client connects: clients turn unspecified addresses into loopback."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort, or None where it would fail."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1 : end + 2] != ":":
            return None
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None
    host, port = hostport.split(":")
    return host, port


def parse_ollama_host(env: Mapping[str, str]) -> HostPort:
    """``envconfig.Host``: default 127.0.0.1:11434; ``http://x`` → 80, ``https://x`` → 443."""
    raw = env.get("OLLAMA_HOST", "").strip().strip("\"'").strip()
    default_port = str(DEFAULT_PORT)
    scheme, sep, hostport = raw.partition("://")
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport = hostport.split("/", 1)[0]
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        try:
            host = str(ipaddress.ip_address(hostport.strip("[]")))
        except ValueError:
            if hostport:
                host = hostport
    else:
        host, port = split
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        number = int(default_port)
    return HostPort(scheme, host, number)


def write_standin(directory: Path) -> Path:
    """Write an executable ``ollama`` in ``directory`` that runs this emulator; return its path.

    Point ``OLLAMA_BIN`` or ``PATH`` at it to rehearse anything that starts ``ollama serve``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ollama"
    python = shlex.quote(sys.executable)
    path.write_text(
        "#!/bin/sh\n"
        "# Stand-in for the ollama binary: the ollama-ondemand emulator.\n"
        f'exec {python} -m ondemand.sandbox.ollama "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
