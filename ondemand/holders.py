"""Who holds a lease, and the leases this machine's user took.

A holder names whoever will later run ``down``, so its cleanup finds the leases its ``up``
took:

- ``--holder`` / ``ONDEMAND_LEASE_HOLDER`` when given;
- in Actions, ``<repo>/<run_id>/<job>/<attempt>``: a job's cleanup releases its own lease
  and never another job's; but a run started by hand (``workflow_dispatch``, as the manual
  workflow ``init`` writes) is ``<repo>/manual/<workflow>``, so a ``down`` run days later
  releases the lease an earlier manual ``up`` took;
- elsewhere ``<user>@<host>/<deployment>``: the same from every shell, script and Makefile
  target of this user, so ``X=$(ondemand up)`` in one shell and ``ondemand down`` in
  another match.

``up`` also writes each lease it takes, with its holder, to this machine's state directory
(``leases/<provider>/<name>.json``), and ``down`` releases the holder's leases by id as
well as by name: the cost share and "that lease had expired" are told per lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ondemand.statedir import state_root

ACTIONS_HOLDER_PARTS = ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_JOB", "GITHUB_RUN_ATTEMPT")


def holder_name(env: Mapping[str, str], deployment: str = "") -> str:
    given = env.get("ONDEMAND_LEASE_HOLDER", "").strip()
    if given:
        return given
    parts = [env.get(name, "").strip() for name in ACTIONS_HOLDER_PARTS]
    if env.get("GITHUB_ACTIONS") == "true" and all(parts):
        if env.get("GITHUB_EVENT_NAME") == "workflow_dispatch":
            workflow = env.get("GITHUB_WORKFLOW", "").strip() or "workflow"
            return f"{parts[0]}/manual/{workflow}"
        return "/".join(parts)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    name = f"{user}@{socket.gethostname()}"
    return f"{name}/{deployment}" if deployment else name


class LeaseRecords:
    """The leases ``up`` took from this machine for one deployment (ids and holders only:
    a per-run key is never written down)."""

    def __init__(self, env: Mapping[str, str], provider: str, deployment: str) -> None:
        self.path = state_root(env) / "leases" / provider / f"{deployment}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        """The records, read and written under a lock: two shells may run ``up`` at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with Path(str(self.path) + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read()
            yield records
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"leases": records}, handle, indent=2)
            tmp.replace(self.path)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # nothing recorded, or a broken file: the holder's name still works
        leases = data.get("leases") if isinstance(data, dict) else None
        return [x for x in leases if isinstance(x, dict)] if isinstance(leases, list) else []

    def add(self, lease_id: str, holder: str, expires_in_seconds: float) -> None:
        with self._locked() as records:
            now = time.time()
            records[:] = [r for r in records if float(r.get("until") or 0) > now]
            records.append(
                {"id": lease_id, "holder": holder, "until": round(now + expires_in_seconds)}
            )

    def ids(self, holder: str) -> list[str]:
        """The live leases ``holder`` took from here (another holder's are its own to
        release: two sessions that set different holders stay apart)."""
        now = time.time()
        return [
            str(r["id"])
            for r in self._read()
            if float(r.get("until") or 0) > now and r.get("holder") == holder
        ]

    def forget(self, lease_ids: list[str]) -> None:
        if not lease_ids or not self.path.exists():
            return
        with self._locked() as records:
            records[:] = [r for r in records if r.get("id") not in lease_ids]
