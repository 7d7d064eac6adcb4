"""The sandbox's state on disk: one JSON document per emulated API, replaced atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger("ondemand.sandbox")


def write_json_atomic(path: Path, data: object) -> None:
    """Write to a temporary file in the same directory, then rename over ``path``: a reader
    (or a sandbox killed mid-write) sees the old document or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def read_json(path: Path) -> dict[str, object] | None:
    """The stored document; None when there is none. A corrupt one is moved aside (and
    logged) rather than refusing to start: the sandbox is a rehearsal, not a database."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            path.replace(aside)
        log.warning("sandbox state %s is unreadable (%s); moved to %s", path, exc, aside)
        return None
    if not isinstance(data, dict):
        log.warning("sandbox state %s is not a JSON object; ignored", path)
        return None
    return data
