"""deploy, start, up, down, status, delete: the lifecycle, written once for every provider.

Providers only talk to their vendor; everything a user sees (the spec built from the
config, waiting with progress, the server's own view of readiness, what to print) is here:

- ``deployment``: the provider, the keys, the spec, and ``deploy``;
- ``readiness``: waiting until the server says its models are warm;
- ``up``: ``start`` and ``up``;
- ``down``: ``down``, the verified stop, ``delete``, and what it cost;
- ``status``: the provider's and the server's view.
"""

from __future__ import annotations

from ondemand.lifecycle.deployment import (
    admin_key,
    build_spec,
    deploy,
    make_provider,
    opened_provider,
    user_key,
)
from ondemand.lifecycle.down import DownResult, delete, down, run_cost, stop_and_verify
from ondemand.lifecycle.readiness import Readiness, describe_models, read_readiness
from ondemand.lifecycle.status import status
from ondemand.lifecycle.up import UpResult, start, up

__all__ = [
    "DownResult",
    "Readiness",
    "UpResult",
    "admin_key",
    "build_spec",
    "delete",
    "deploy",
    "describe_models",
    "down",
    "make_provider",
    "opened_provider",
    "read_readiness",
    "run_cost",
    "start",
    "status",
    "stop_and_verify",
    "up",
    "user_key",
]
