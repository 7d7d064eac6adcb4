"""Leases as ``up`` and ``down`` use them: take one as soon as the server answers, and
decide whether a cleanup may stop the deployment.

The rule (docs/safety.md): ``down`` stops only after the server itself agreed to drain
(no live lease, nothing in flight) in the same step that released this job's lease, and a
draining server refuses new leases. A job whose ``up`` is told "draining" waits for the
stop and starts the server again. When the server cannot be asked, ``down`` does not stop
it unless ``--force`` or the deployment is past its max lifetime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ondemand.providers.base import Deployment, Status
from ondemand.serverapi import ServerApi


class Restart(Exception):
    """The server went away under a starting ``up`` (another job's cleanup, the watchdog);
    the message says what was seen."""


@dataclass
class Lease:
    id: str
    holder: str
    expires_at: str
    expires_in_seconds: float
    key: str | None = field(default=None, repr=False)


class LeaseTaker:
    """Takes this job's lease during ``up``'s wait, once the server answers."""

    def __init__(
        self,
        holder: str,
        ttl_seconds: float,
        headers: Mapping[str, str],
        *,
        run_key: bool,
        models: list[str] | None,
    ) -> None:
        self.admin_key: str | None = None
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self.headers = headers
        self.run_key = run_key
        self.models = models  # what a per-run key may use; None: every model
        self.lease: Lease | None = None
        self.url: str | None = None
        self.problem: str | None = None
        self.saw_draining = False

    def use_admin_key(self, key: str | None) -> None:
        self.admin_key = key
        self.problem = None if key else "no admin key is known (set ONDEMAND_ADMIN_KEY)"

    @property
    def settled(self) -> bool:
        return self.lease is not None or self.problem is not None

    def release(self) -> None:
        """Give the lease back: the ``up`` that took it failed or was cancelled, so its job
        will not use the server (best effort; an unreleased lease still expires)."""
        lease, url = self.lease, self.url
        if lease is None or url is None or self.admin_key is None:
            return
        with ServerApi(url, self.admin_key, self.headers, timeout=5) as api:
            api.release(lease.id)
        self.lease = None

    def attempt(self, url: str) -> None:
        if self.settled or self.admin_key is None:
            return
        self.url = url
        with ServerApi(url, self.admin_key, self.headers) as api:
            answer = api.acquire(
                self.holder, self.ttl_seconds, key=self.run_key, models=self.models
            )
        if answer.ok:
            body = answer.body
            self.lease = Lease(
                str(body.get("id")),
                str(body.get("holder")),
                str(body.get("expires_at")),
                float(body.get("expires_in_seconds") or 0),
                body.get("key") if isinstance(body.get("key"), str) else None,
            )
        elif answer.kind == "draining":
            self.saw_draining = True
            raise Restart("another job's cleanup or the watchdog is stopping it")
        elif answer.kind != "unreachable":
            # A server older than leases, or a key it does not take: go on without one.
            self.problem = answer.detail


@contextlib.contextmanager
def stopping_after(drain: ServerApi | None) -> Iterator[None]:
    """The stop a drain was granted for. If it fails, the drain is called off so new jobs
    may take leases again; either way the drain's client is closed."""
    try:
        yield
    except Exception:
        if drain is not None:
            drain.cancel_drain()
        raise
    finally:
        if drain is not None:
            drain.close()


@dataclass
class StopCheck:
    """Whether ``down`` may stop, and what to say either way."""

    stop: bool
    message: str
    drained_via: ServerApi | None = None  # call the drain off if the stop fails
    released: list[dict[str, Any]] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)


def check_stop(
    deployment: Deployment,
    *,
    admin_key: str | None,
    headers: Mapping[str, str],
    lease_id: str | None,
    holder: str,
    drain_seconds: float,
    max_lifetime_seconds: float,
    server_absent: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> StopCheck:
    """Release this job's lease and ask the server whether the deployment may stop."""
    if deployment.status is not Status.RUNNING or not deployment.url or server_absent:
        state = deployment.vendor_state or deployment.status.value
        why = "no worker is running" if server_absent else f"it is {state}, not serving yet"
        return StopCheck(True, f"{why}, so no job can hold a lease on it")
    age = (now() - deployment.running_since).total_seconds() if deployment.running_since else 0
    too_old = age > max_lifetime_seconds
    if admin_key is None:
        if too_old:
            return StopCheck(True, "past its max lifetime")
        return StopCheck(
            False,
            "not stopped: no admin key is known, so its leases cannot be checked "
            "(set ONDEMAND_ADMIN_KEY, or run 'ondemand down --force' to stop it anyway)",
        )
    api = ServerApi(deployment.url, admin_key, headers)
    answer = api.drain(
        release=lease_id,
        holder=None if lease_id else holder,
        ttl_seconds=drain_seconds,
        reason=f"down by {holder}",
    )
    body = answer.body
    released = [x for x in body.get("released_leases") or [] if isinstance(x, dict)]
    # A lease that outlived its TTL (a job longer than lease_ttl) is worth knowing about.
    gone = answer.ok and lease_id is not None and lease_id not in (body.get("released") or [])
    lost = f"lease {lease_id} was not live (it expired, or was released already); " if gone else ""
    if answer.ok and body.get("draining"):
        return StopCheck(True, f"{lost}no live lease and nothing in flight", api, released)
    api.close()
    if answer.ok:
        holders = [str(x) for x in body.get("holders") or []]
        message = f"kept running: {lost}{body.get('reason')}"
        if not holders:
            # No other job's cleanup will come for it: say who will.
            message += (
                "; no job holds a lease on it now, so run 'ondemand down' again once that "
                "is done, or the watchdog, the server's idle stop or the reaper stops it "
                "when idle"
            )
        return StopCheck(False, message, released=released, holders=holders)
    if answer.kind == "unsupported":
        return StopCheck(True, "the server predates leases")
    if too_old:
        return StopCheck(True, f"past its max lifetime, and the server said: {answer.detail}")
    if answer.kind == "refused":
        return StopCheck(
            False,
            f"not stopped: the server refused the admin key ({answer.detail}); check "
            "ONDEMAND_ADMIN_KEY, or run 'ondemand down --force'",
        )
    return StopCheck(
        False,
        f"not stopped: the server did not answer ({answer.detail}), so whether other jobs "
        "still use it is unknown; the watchdog or the reaper stops it once it is idle or "
        "past its max lifetime, and 'ondemand down --force' stops it now",
    )


def check_drain(
    deployment: Deployment,
    admin_key: str | None,
    headers: Mapping[str, str],
    *,
    idle_seconds: float | None,
    drain_seconds: float,
    reason: str,
    dry_run: bool = False,
) -> tuple[bool, str, ServerApi | None]:
    """Ask the server to drain for a backstop (watchdog, reaper): (drained, why, the API
    to call the drain off with). Anything but a clear answer counts as active. A dry run
    reads the server's status instead and predicts the answer (for the reaper: no idle
    time is asked then)."""
    if not admin_key or not deployment.url:
        return False, _UNREADABLE.format("no admin key"), None
    api = ServerApi(deployment.url, admin_key, headers)
    if dry_run:
        answer = api.status()
        api.close()
        if answer.ok:
            return _predict(answer.body)
        return False, _UNREADABLE.format(answer.detail), None
    answer = api.drain(idle_seconds=idle_seconds, ttl_seconds=drain_seconds, reason=reason)
    if answer.ok and answer.body.get("draining"):
        return True, str(answer.body.get("reason") or reason), api
    api.close()
    if answer.ok:
        return False, str(answer.body.get("reason")), None
    return False, _UNREADABLE.format(answer.detail), None


_UNREADABLE = "its activity cannot be read ({}): counted as active"


def _predict(status: Mapping[str, Any]) -> tuple[bool, str, ServerApi | None]:
    """The reaper's dry run, from the server's status: it would drain with no live lease
    and nothing in flight (the reaper asks no idle time)."""
    leases = status.get("leases") if isinstance(status.get("leases"), dict) else {}
    live = int((leases or {}).get("live") or 0)
    inflight = int(status.get("inflight") or 0)
    if live:
        return False, f"{live} live lease(s)", None
    if inflight:
        return False, f"{inflight} request(s) in flight", None
    return True, "no live lease, nothing in flight", None
