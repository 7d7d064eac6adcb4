"""The server's admin routes as the CLI uses them: leases, draining, activity.

Every answer is sorted into what the caller decides on: taken, draining, unsupported (a
server older than leases), refused (a wrong admin key) or unreachable. Nothing here
raises on the network; the lifecycle decides what a missing answer means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Answer:
    """One call's outcome. ``kind``: ok, draining, unsupported, refused, unreachable, error.
    ``replica`` names the server that answered, among several behind one URL."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    replica: str | None = None

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
        fresh_connections: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {**(headers or {}), "X-API-Key": admin_key}
        if fresh_connections:
            # A load balancer that balances connections, not requests, would send every
            # request of one connection to the same replica.
            self._headers["Connection"] = "close"
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
        replica = response.headers.get("x-ondemand-replica")
        if code in (200, 201, 202):
            return Answer("ok", data, replica=replica)
        if code == 409 and data.get("draining"):
            return Answer("draining", data, str(data.get("error") or "draining"), replica)
        if code in (401, 403):
            return Answer("refused", data, f"HTTP {code}: the admin key was not accepted", replica)
        if code in (404, 405) and "no such route" in str(data.get("error", "")):
            return Answer("unsupported", data, "this server predates leases", replica)
        # What stands in front of the server when it is not there: RunPod's gateway with no
        # worker, a proxy's 502/524, a load balancer with no replica ready.
        if code >= 500 or data.get("error") == "no workers available":
            return Answer("unreachable", data, f"HTTP {code} from in front of the server")
        return Answer(
            "error", data, f"HTTP {code}: {data.get('error') or response.text[:200]}", replica
        )

    def acquire(
        self,
        holder: str,
        ttl_seconds: float,
        *,
        key: bool = False,
        models: list[str] | None = None,
        lease_id: str | None = None,
    ) -> Answer:
        """Take a lease (``lease_id``: the same id on every replica; a live one is renewed);
        with ``key``, a per-run key for ``models`` (None: every model)."""
        body: dict[str, Any] = {"holder": holder, "ttl_seconds": ttl_seconds}
        if lease_id:
            body["id"] = lease_id
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
        release: list[str] | None = None,
        holder: str | None = None,
        idle_seconds: float | None = None,
        ttl_seconds: float = 900,
        reason: str | None = None,
        wait_inflight: bool = False,
    ) -> Answer:
        body: dict[str, Any] = {"ttl_seconds": max(1, min(ttl_seconds, 7 * 24 * 3600))}
        for name, value in (("release", release), ("holder", holder),
                            ("idle_seconds", idle_seconds), ("reason", reason)):  # fmt: skip
            if value is not None:
                body[name] = value
        if wait_inflight:
            body["inflight"] = "wait"
        return self._call("POST", "/ondemand/drain", body)

    def drain_state(self) -> Answer:
        """The drain in force, if any, and the requests in flight now."""
        return self._call("GET", "/ondemand/drain")

    def cancel_drain(self) -> Answer:
        return self._call("DELETE", "/ondemand/drain")

    def add_models(self, models: list[str]) -> Answer:
        """Pull and warm these models on the running server, beside its own."""
        return self._call("POST", "/ondemand/models", {"models": models})

    def status(self) -> Answer:
        return self._call("GET", "/ondemand/status")
