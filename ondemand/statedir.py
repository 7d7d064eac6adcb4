"""Where ondemand keeps state on this machine: ``ONDEMAND_STATE_DIR``, else the job's
``$RUNNER_TEMP/ondemand`` in Actions, else the user's cache directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def state_root(env: Mapping[str, str]) -> Path:
    explicit = env.get("ONDEMAND_STATE_DIR", "").strip()
    if explicit:
        return Path(explicit)
    runner_temp = env.get("RUNNER_TEMP", "").strip()
    if runner_temp:
        return Path(runner_temp) / "ondemand"
    cache = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "ondemand"
