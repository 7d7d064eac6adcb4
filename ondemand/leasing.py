"""Leases as ``up`` and ``down`` use them: take one as soon as the server answers, and
decide whether a cleanup may stop the deployment.

The rule (docs/safety.md): ``down`` stops only after the server itself agreed to drain (no
live lease) in the same step that released this job's lease, and a draining server refuses
new leases. Requests still in flight then get ``--drain-timeout`` to end before the stop.
A job whose ``up`` is told "draining" waits for the stop and starts the server again. When
the server cannot be asked, ``down`` does not stop it unless ``--force`` or the deployment
is past its max lifetime.

Every step goes to every replica behind the URL (``Fleet.each``): a lease is taken under
one id on each, and the drain holds only if each replica agreed; one that refused, or did
not answer, calls the drain off on all. A job taking a lease and a cleanup draining race
on every replica alike, so at least one of them sees the other on a replica both reached:
either the cleanup finds the lease and keeps the server, or the job finds the drain and
waits for the stop (and both may back off, which costs a retry, never a job).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ondemand.fleet import Fleet, Sweep
from ondemand.providers.base import Deployment, Status

if TYPE_CHECKING:
    from ondemand.serverapi import Answer

Progress = Callable[[str], None]


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


def new_lease_id() -> str:
    return "lse_" + secrets.token_urlsafe(12)


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
        self.lease_id = new_lease_id()
        self.where: Deployment | None = None  # where the lease was taken
        self.problem: str | None = None
        self.saw_draining = False

    def use_admin_key(self, key: str | None) -> None:
        self.admin_key = key
        self.problem = None if key else "no admin key is known (set ONDEMAND_ADMIN_KEY)"

    @property
    def settled(self) -> bool:
        return self.lease is not None or self.problem is not None

    def _fleet(self, deployment: Deployment, timeout: float = 10.0) -> Fleet | None:
        if self.admin_key is None or not deployment.url:
            return None
        return Fleet(
            deployment.url, self.admin_key, self.headers,
            replicas=deployment.replicas, timeout=timeout,
        )  # fmt: skip

    def release(self) -> None:
        """Give the lease back: the ``up`` that took it failed, was cancelled, or found the
        server draining (best effort; an unreleased lease still expires). The next try
        takes a lease under a new id, since a released id stays dead."""
        where, lease_id = self.where, self.lease_id
        self.lease, self.where, self.lease_id = None, None, new_lease_id()
        fleet = self._fleet(where, timeout=5) if where is not None else None
        if fleet is None:
            return
        with fleet:
            fleet.each(lambda api: api.release(lease_id))

    def attempt(self, deployment: Deployment) -> None:
        if self.settled:
            return
        fleet = self._fleet(deployment)
        if fleet is None:
            return
        with fleet:
            first = fleet.one(
                lambda api: api.acquire(
                    self.holder, self.ttl_seconds, key=self.run_key, models=self.models,
                    lease_id=self.lease_id,
                )
            )  # fmt: skip
            if first.kind in ("draining", "ok"):
                self.where = deployment
            if first.kind == "draining":
                self._draining()
            if not first.ok:
                if first.kind != "unreachable":
                    # A server older than leases, or a key it does not take: go on without.
                    self.problem = first.detail
                return
            if fleet.expected > 1:
                rest = fleet.each(
                    lambda api: api.acquire(self.holder, self.ttl_seconds, lease_id=self.lease_id)
                )
                if any(a.kind == "draining" for a in rest.answers):
                    self._draining()
        body = first.body
        self.lease = Lease(
            str(body.get("id")),
            str(body.get("holder")),
            str(body.get("expires_at")),
            float(body.get("expires_in_seconds") or 0),
            body.get("key") if isinstance(body.get("key"), str) else None,
        )

    def _draining(self) -> None:
        self.saw_draining = True
        self.release()
        raise Restart("another job's cleanup or the watchdog is stopping it")


@contextlib.contextmanager
def stopping_after(drain: Fleet | None) -> Iterator[None]:
    """The stop a drain was granted for. If it fails, the drain is called off so new jobs
    may take leases again; either way the drain's client is closed."""
    try:
        yield
    except BaseException:
        if drain is not None:
            drain.each(lambda api: api.cancel_drain())
        raise
    finally:
        if drain is not None:
            drain.close()


@dataclass
class StopCheck:
    """Whether ``down`` may stop, and what to say either way."""

    stop: bool
    message: str
    drained_via: Fleet | None = None  # call the drain off if the stop fails
    released: list[dict[str, Any]] = field(default_factory=list)
    holders: list[str] = field(default_factory=list)
    inflight: int = 0  # requests still in flight when the drain was granted


def check_stop(
    deployment: Deployment,
    *,
    admin_key: str | None,
    headers: Mapping[str, str],
    lease_ids: list[str],
    holder: str | None,
    drain_seconds: float,
    max_lifetime_seconds: float,
    server_absent: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> StopCheck:
    """Release this job's leases (``lease_ids``, and every lease of ``holder``) and ask
    every replica whether the deployment may stop; requests in flight do not keep it."""
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
    fleet = Fleet(deployment.url, admin_key, headers, replicas=deployment.replicas)
    sweep = fleet.each(
        lambda api: api.drain(
            release=lease_ids or None,
            holder=holder,
            ttl_seconds=drain_seconds,
            reason=f"down by {holder or ', '.join(lease_ids)}",
            wait_inflight=True,
        )
    )
    released = _released(sweep)
    gone = [i for i in lease_ids if i not in {str(x.get("id")) for x in released}]
    lost = (
        f"lease {', '.join(gone)} was not live (it expired, or was released already); "
        if gone and sweep.answers and all(a.ok for a in sweep.answers)
        else ""
    )
    if sweep.complete and all(a.ok and a.body.get("draining") for a in sweep.answers):
        inflight = sum(int(a.body.get("inflight") or 0) for a in sweep.latest().values())
        message = f"{lost}no live lease" + ("" if inflight else " and nothing in flight")
        return StopCheck(True, message, fleet, released, inflight=inflight)
    if any(a.ok and a.body.get("draining") for a in sweep.answers):
        fleet.each(lambda api: api.cancel_drain())
    fleet.close()
    leases = _live_leases(sweep)
    if leases:
        holders = sorted({str(x.get("holder")) for x in leases})
        return StopCheck(
            False, f"kept running: {lost}{describe_leases(leases)}", released=released,
            holders=holders,
        )  # fmt: skip
    refusal = next((a for a in sweep.answers if a.ok and not a.body.get("draining")), None)
    if refusal is not None and sweep.complete:
        # A server that cannot wait for requests in flight itself (an older version).
        return StopCheck(
            False, f"kept running: {lost}{refusal.body.get('reason')}; run 'ondemand down' "
            "again once that is done", released=released,
        )  # fmt: skip
    failure = sweep.first_failure()
    if failure is not None and failure.kind == "unsupported":
        return StopCheck(True, "the server predates leases", released=released)
    detail = (
        _missing(sweep)
        if failure is None
        else f"the server did not answer ({failure.detail})"
        if failure.kind == "unreachable"
        else failure.detail
    )
    if too_old:
        return StopCheck(True, f"past its max lifetime, and the server said: {detail}")
    if failure is not None and failure.kind == "refused":
        return StopCheck(
            False,
            f"not stopped: the server refused the admin key ({detail}); check "
            "ONDEMAND_ADMIN_KEY, or run 'ondemand down --force'",
            released=released,
        )
    return StopCheck(
        False,
        f"not stopped: {detail}, so whether other jobs still use it is unknown; the "
        "watchdog or the reaper stops it once it is idle or past its max lifetime, and "
        "'ondemand down --force' stops it now",
        released=released,
    )


def _missing(sweep: Sweep) -> str:
    heard = len(sweep.replicas)
    return (
        f"only {heard} of its {sweep.expected} replicas answered"
        if sweep.answers
        else "the server did not answer"
    )


def _released(sweep: Sweep) -> list[dict[str, Any]]:
    """The leases this step released, once each (a lease lives on every replica)."""
    seen: dict[str, dict[str, Any]] = {}
    for answer in sweep.answers:
        for lease in answer.body.get("released_leases") or []:
            if isinstance(lease, dict):
                seen.setdefault(str(lease.get("id")), lease)
    return list(seen.values())


def _live_leases(sweep: Sweep) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for answer in sweep.answers:
        for lease in answer.body.get("leases") or []:
            if isinstance(lease, dict):
                seen.setdefault(str(lease.get("id")), lease)
        # A server that lists holders only (older than lease details).
        if not answer.body.get("leases"):
            for name in answer.body.get("holders") or []:
                seen.setdefault(f"holder:{name}", {"holder": name})
    return sorted(seen.values(), key=lambda x: -float(x.get("held_seconds") or 0))


def describe_leases(leases: list[dict[str, Any]]) -> str:
    """Who holds it, each with its lease's age and end, and how to stop it anyway."""
    parts = []
    for lease in leases:
        text = str(lease.get("holder"))
        facts = []
        if lease.get("id") and str(lease["id"]).startswith("lse_"):
            facts.append(f"lease {lease['id']}")
        if lease.get("held_seconds") is not None:
            facts.append(f"held {span(float(lease['held_seconds']))}")
        if lease.get("expires_in_seconds") is not None:
            facts.append(f"ends in {span(float(lease['expires_in_seconds']))}")
        parts.append(f"{text} ({', '.join(facts)})" if facts else text)
    return (
        f"{len(leases)} live lease(s): " + "; ".join(parts) + "; to stop it anyway: "
        "'ondemand down --force', or release one with 'ondemand down --lease ID'"
    )


def span(seconds: float) -> str:
    """A duration as people read it in a message: 40s, 12 min, 2.5 h."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def wait_for_requests(
    check: StopCheck,
    *,
    timeout: float,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """After a drain was granted with requests in flight: wait until none is left on any
    replica, or ``timeout`` passed (a request without a lease is no reason to keep a GPU).
    New leases are refused meanwhile. Answers what to add to the stop's message."""
    fleet = check.drained_via
    if fleet is None or not check.inflight:
        return ""
    start = clock()
    inflight, shown = check.inflight, -1
    while True:
        elapsed = clock() - start
        if inflight != shown:
            shown = inflight
            progress(
                f"  waiting for {inflight} request(s) in flight to end "
                f"({elapsed:.0f}s of {timeout:.0f}s; new leases are refused meanwhile)"
            )
        if elapsed >= timeout:
            return f"; stopped with {inflight} request(s) still in flight after {timeout:.0f}s"
        sleep(min(0.5, max(0.0, timeout - elapsed)))
        sweep = fleet.each(lambda api: api.drain_state())
        if sweep.complete and all(a.ok for a in sweep.answers):
            inflight = sum(int(a.body.get("inflight") or 0) for a in sweep.latest().values())
            if inflight == 0:
                return f"; {check.inflight} request(s) in flight ended first"


def check_drain(
    deployment: Deployment,
    admin_key: str | None,
    headers: Mapping[str, str],
    *,
    idle_seconds: float | None,
    drain_seconds: float,
    reason: str,
    dry_run: bool = False,
) -> tuple[bool, str, Fleet | None]:
    """Ask every replica to drain for a backstop (watchdog, reaper): (drained, why, the
    fleet to call the drain off with). Anything but a clear answer from every replica
    counts as active. A dry run reads the servers' status instead and predicts the answer
    (for the reaper: no idle time is asked then)."""
    if not admin_key or not deployment.url:
        return False, _UNREADABLE.format("no admin key"), None
    fleet = Fleet(deployment.url, admin_key, headers, replicas=deployment.replicas)
    if dry_run:
        with fleet:
            sweep = fleet.each(lambda api: api.status())
        if sweep.complete and all(a.ok for a in sweep.answers):
            return _predict([a.body for a in sweep.latest().values()])
        return False, _UNREADABLE.format(_trouble(sweep)), None
    sweep = fleet.each(
        lambda api: api.drain(idle_seconds=idle_seconds, ttl_seconds=drain_seconds, reason=reason)
    )
    if sweep.complete and all(a.ok and a.body.get("draining") for a in sweep.answers):
        return True, str(sweep.answers[0].body.get("reason") or reason), fleet
    if any(a.ok and a.body.get("draining") for a in sweep.answers):
        fleet.each(lambda api: api.cancel_drain())
    fleet.close()
    refusal = next((a for a in sweep.answers if a.ok and not a.body.get("draining")), None)
    if refusal is not None:
        return False, str(refusal.body.get("reason")), None
    return False, _UNREADABLE.format(_trouble(sweep)), None


_UNREADABLE = "its activity cannot be read ({}): counted as active"


def _trouble(sweep: Sweep) -> str:
    failure: Answer | None = sweep.first_failure()
    return failure.detail if failure is not None else _missing(sweep)


def _predict(statuses: list[Mapping[str, Any]]) -> tuple[bool, str, Fleet | None]:
    """The reaper's dry run, from every replica's status: it would drain with no live lease
    and nothing in flight (the reaper asks no idle time)."""
    held: set[str] = set()
    live = inflight = 0
    for status in statuses:
        leases = status.get("leases") if isinstance(status.get("leases"), dict) else {}
        live = max(live, int((leases or {}).get("live") or 0))
        held |= {str(x.get("id")) for x in (leases or {}).get("held") or [] if isinstance(x, dict)}
        inflight += int(status.get("inflight") or 0)
    # One lease lives on every replica: count each once.
    live = max(live, len(held))
    if live:
        return False, f"{live} live lease(s)", None
    if inflight:
        return False, f"{inflight} request(s) in flight", None
    return True, "no live lease, nothing in flight", None
