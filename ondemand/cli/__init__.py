"""The command line: the only package that imports click. It parses, calls, prints.

Everything heavy (pydantic, httpx, PyGithub, the ASGI server) is imported inside the
command that needs it, so ``ondemand --help`` stays fast. Commands register themselves on
the root group when their module is imported below.
"""

from __future__ import annotations

from ondemand.cli import backstops, init, lifecycle, servers, tools  # noqa: F401  (registration)
from ondemand.cli.root import App, cli, main, not_available, pass_app, spread_global_options

spread_global_options(cli)

__all__ = ["App", "cli", "main", "not_available", "pass_app"]
