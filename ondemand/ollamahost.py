"""``OLLAMA_HOST`` read by Ollama's own rules, for everything that names an Ollama.

The rules are those of ``envconfig.Host`` and ``envconfig.ConnectableHost`` in Ollama's
``envconfig/config.go`` (github.com/ollama/ollama, tag v0.33.0-rc2, commit
fb30760996871fa9460115c753afd2c60d4ab0f7; the image pins the 0.33 line), with the cases of
its ``TestHost`` table:

- spaces, then quotes, then spaces are trimmed (``envconfig.Var``);
- no ``://``: scheme ``http``, default port 11434 (and bare ``ollama.com`` is
  ``https://ollama.com:443``); ``http://`` defaults to port 80, ``https://`` to 443;
- what follows the first ``/`` after the host is a path (``https://example.com/ollama``);
- ``host:port``, ``[v6]:port``, ``:port`` (every interface) split as Go's
  ``net.SplitHostPort`` does; anything else is a host alone: an IP (``::1`` and ``[::1]`` are
  both IPv6 loopback) or a name, and an empty value is 127.0.0.1;
- a port that is not a number in 0-65535 is replaced by the default (Ollama logs a warning).

``ondemand serve`` and the proxy refuse that last case instead of guessing (``bad_port``
says what Ollama would have ignored); the emulator, a stand-in for Ollama, falls back as
Ollama does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_PORT = 11434


@dataclass(frozen=True, slots=True)
class OllamaHost:
    scheme: str
    host: str
    """Empty means every interface (``OLLAMA_HOST=:11434``)."""
    port: int
    path: str = ""
    bad_port: str | None = None
    """The port text Ollama would have ignored for the default, if any."""

    @property
    def bind_host(self) -> str:
        return self.host or "0.0.0.0"

    @property
    def connect_host(self) -> str:
        """Where a client connects: unspecified addresses become loopback
        (``ConnectableHost``); an empty host is dialled as the local machine."""
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def url(self) -> str:
        """A base URL a client can use: ``scheme://host:port[/path]``."""
        host = self.connect_host
        if ":" in host:
            host = f"[{host}]"
        path = "/" + self.path.rstrip("/") if self.path.rstrip("/") else ""
        return f"{self.scheme}://{host}:{self.port}{path}"


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``, or None where it returns an error."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1 : end + 2] != ":":
            return None
        host, port = hostport[1:end], hostport[end + 2 :]
        return None if "[" in port or "]" in port else (host, port)
    if hostport.count(":") != 1 or "[" in hostport or "]" in hostport:
        return None
    host, _, port = hostport.partition(":")
    return host, port


def _go_ip(text: str) -> str | None:
    """``net.ParseIP(text).String()``: the canonical form, or None when not an IP."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_ollama_host(raw: str) -> OllamaHost:
    """``OLLAMA_HOST`` as Ollama 0.33 reads it (see the module's docstring)."""
    text = raw.strip().strip("\"'").strip()
    default_port = str(DEFAULT_PORT)
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        ip = _go_ip(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport:
            host = hostport
    else:
        host, port = split
    # Go's strconv.ParseInt accepts a sign; the range check keeps 0-65535.
    digits = port.removeprefix("+").removeprefix("-")
    if digits.isascii() and digits.isdigit() and 0 <= int(port) <= 65535:
        return OllamaHost(scheme, host, int(port), path)
    return OllamaHost(scheme, host, int(default_port), path, bad_port=port)
