"""The server's admin routes as the CLI uses them: leases, draining, activity.

Every answer is sorted into what the caller decides on: taken, draining, unsupported (a
server older than leases), refused (a wrong admin key) or unreachable. Nothing here
raises on the network; the lifecycle decides what a missing answer means.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

ACTIONS_HOLDER_PARTS = ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_JOB", "GITHUB_RUN_ATTEMPT")


def holder_name(env: Mapping[str, str]) -> str:
    """Who holds the lease: ``ONDEMAND_LEASE_HOLDER``; in Actions
    ``<repo>/<run_id>/<job>/<attempt>``, so a job's cleanup finds its own lease; else
    ``user@host/<shell pid>``: the ``up`` and ``down`` of one terminal or script match, and
    two terminals racing each other do not release each other's leases."""
    given = env.get("ONDEMAND_LEASE_HOLDER", "").strip()
    if given:
        return given
    parts = [env.get(name, "").strip() for name in ACTIONS_HOLDER_PARTS]
    if env.get("GITHUB_ACTIONS") == "true" and all(parts):
        return "/".join(parts)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return f"{user}@{socket.gethostname()}/{os.getppid()}"


@dataclass
class Answer:
    """One call's outcome. ``kind``: ok, draining, unsupported, refused, unreachable, error."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class ServerApi:
    def __init__(
        self,
        url: str,
        admin_key: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {**(headers or {}), "X-API-Key": admin_key}
        self._client = httpx.Client(timeout=timeout, transport=transport, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServerApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Answer:
        try:
            response = self._client.request(
                method, self.url + path, headers=self._headers, json=body
            )
        except httpx.HTTPError as exc:
            return Answer("unreachable", detail=f"{type(exc).__name__}: {exc}".rstrip(": "))
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        code = response.status_code
        if code in (200, 201):
            return Answer("ok", data)
        if code == 409 and data.get("draining"):
            return Answer("draining", data, str(data.get("error") or "draining"))
        if code in (401, 403):
            return Answer("refused", data, f"HTTP {code}: the admin key was not accepted")
        if code in (404, 405) and "no such route" in str(data.get("error", "")):
            return Answer("unsupported", data, "this server predates leases")
        # What stands in front of the server when it is not there: RunPod's gateway with no
        # worker, a proxy's 502/524.
        if code >= 500 or data.get("error") == "no workers available":
            return Answer("unreachable", data, f"HTTP {code} from in front of the server")
        return Answer("error", data, f"HTTP {code}: {data.get('error') or response.text[:200]}")

    def acquire(
        self, holder: str, ttl_seconds: float, *, key: bool = False, models: list[str] | None = None
    ) -> Answer:
        """Take a lease; with ``key``, a per-run key for ``models`` (None: every model)."""
        body: dict[str, Any] = {"holder": holder, "ttl_seconds": ttl_seconds}
        if key:
            body["key"] = {"models": models} if models else True
        return self._call("POST", "/ondemand/leases", body)

    def release(self, lease_id: str) -> Answer:
        return self._call("DELETE", f"/ondemand/leases/{lease_id}")

    def leases(self) -> Answer:
        return self._call("GET", "/ondemand/leases")

    def drain(
        self,
        *,
        release: str | None = None,
        holder: str | None = None,
        idle_seconds: float | None = None,
        ttl_seconds: float = 900,
        reason: str | None = None,
    ) -> Answer:
        body: dict[str, Any] = {"ttl_seconds": max(1, min(ttl_seconds, 7 * 24 * 3600))}
        for name, value in (("release", release), ("holder", holder),
                            ("idle_seconds", idle_seconds), ("reason", reason)):  # fmt: skip
            if value is not None:
                body[name] = value
        return self._call("POST", "/ondemand/drain", body)

    def cancel_drain(self) -> Answer:
        return self._call("DELETE", "/ondemand/drain")

    def status(self) -> Answer:
        return self._call("GET", "/ondemand/status")
