"""The registry of providers: an explicit table, no plugin discovery.

Provider modules are imported only when chosen, so a command never pays for the HTTP
clients of clouds it does not use.
"""

from __future__ import annotations

import importlib
from typing import Final, Literal, get_args

from ondemand.errors import NotAvailableError, UsageError
from ondemand.providers.base import Provider

ProviderName = Literal["local", "ovh", "runpod", "runpod-pod", "sandbox"]
PROVIDER_NAMES: Final[tuple[str, ...]] = get_args(ProviderName)

# name -> "module:Class"; None for providers this version does not ship yet.
PROVIDERS: Final[dict[str, str | None]] = {
    "local": "ondemand.providers.local:LocalProvider",
    "ovh": "ondemand.providers.ovh:OvhProvider",
    "runpod": "ondemand.providers.runpod:RunpodProvider",
    "runpod-pod": "ondemand.providers.runpod_pod:RunpodPodProvider",
    "sandbox": "ondemand.providers.ovh:SandboxProvider",
}


def provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name``."""
    if name not in PROVIDERS:
        raise UsageError(
            f"unknown provider {name!r}",
            hint="choose one of: " + ", ".join(PROVIDER_NAMES),
        )
    target = PROVIDERS[name]
    if target is None:
        raise NotAvailableError(f"the {name!r} provider is not available yet in this version")
    module_name, _, class_name = target.partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls
