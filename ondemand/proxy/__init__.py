"""The authenticating, streaming reverse proxy in front of Ollama.

Imports nothing above it: the proxy knows no providers and no CLI.
"""

from __future__ import annotations

from ondemand.proxy.app import ProxyApp, create_app
from ondemand.proxy.settings import ProxySettings

__all__ = ["ProxyApp", "ProxySettings", "create_app"]
