"""Leases: who still needs this server. A CI job takes one before its tests and releases it
after; the deployment may stop only when none is left.

The server's clock alone decides expiry, so a runner whose clock is off cannot make a lease
last longer or end sooner: clients get ``expires_in_seconds`` besides ``expires_at``. An
expired lease is gone on the next look, without a sweeper. Leases live in the proxy's
memory: they survive an Ollama restart, and a server restart (the deployment was stopped)
starts with none. Every operation runs on the event loop without awaiting, so release and
its ``remaining`` count are one atomic step.

Draining closes the race between one job's cleanup and another job's start: the decision to
stop (no lease left, nothing in flight) and the refusal of new leases are one step, so a job
either got its lease before the decision (and the stop is called off) or is told the server
is going away (and starts it again once it has stopped). A drain lasts until the server is
stopped or ``ttl`` passes, so a cleanup killed between deciding and stopping blocks nobody
for long.

With several replicas behind one URL each replica keeps its own book, and the client takes
and releases a lease on every replica under one id it chose (docs/safety.md, "Several
replicas"); so acquiring an id that is live renews it, and releasing an id this replica
never saw still records it as released, for the per-run key that names it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ondemand.modelnames import canonical
from ondemand.proxy.activity import iso_utc
from ondemand.proxy.auth import KeyEntry
from ondemand.proxy.runkeys import RunKeyClaim, RunKeys

MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_HOLDER_LENGTH = 200
MAX_RUN_KEY_MODELS = 64
# Released lease ids are remembered (so their per-run keys stay dead) for this long, and
# at most this many: a client cannot grow the book without bound.
MAX_RELEASED = 10_000
LEASE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


class LeaseError(ValueError):
    """A request the lease book refuses; the message says why."""


class Draining(LeaseError):
    """No new lease: the server is being stopped."""


@dataclass
class Lease:
    id: str
    holder: str
    acquired_at: float
    expires_at: float
    keyed: bool = False  # a per-run key was minted with it (the key itself is not kept)
    models: frozenset[str] | None = None  # what its key may use; None: every model

    def view(self, now: float) -> dict[str, object]:
        view: dict[str, object] = {
            "id": self.id,
            "holder": self.holder,
            "acquired_at": iso_utc(self.acquired_at),
            "expires_at": iso_utc(self.expires_at),
            "expires_in_seconds": round(max(0.0, self.expires_at - now), 3),
            "held_seconds": round(max(0.0, now - self.acquired_at), 3),
        }
        if self.keyed:
            view["key_name"] = _key_name(self.holder)
            view["key_models"] = None if self.models is None else sorted(self.models)
        return view

    def released_view(self, now: float) -> dict[str, object]:
        """The lease as it was when released, with how long it was held (a run's share)."""
        return self.view(now)


def _key_name(holder: str) -> str:
    return "lease:" + holder[:64]


@dataclass
class Drain:
    since: float
    until: float
    reason: str

    def view(self, now: float) -> dict[str, object]:
        return {
            "since": iso_utc(self.since),
            "expires_in_seconds": round(max(0.0, self.until - now), 3),
            "reason": self.reason,
        }


@dataclass
class DrainDecision:
    """What ``drain`` decided, with the facts it decided on."""

    draining: bool
    released: list[str]
    remaining: int
    inflight: int
    idle_seconds: float
    reason: str  # why it drains, or why it does not
    expires_in_seconds: float = 0.0
    holders: list[str] = field(default_factory=list)
    # The released leases as they were, with how long each was held (the server's clock).
    released_leases: list[dict[str, object]] = field(default_factory=list)
    leases: list[dict[str, object]] = field(default_factory=list)  # the live ones left

    def view(self) -> dict[str, object]:
        return {
            "draining": self.draining,
            "released": self.released,
            "released_leases": self.released_leases,
            "remaining": self.remaining,
            "holders": self.holders,
            "leases": self.leases,
            "inflight": self.inflight,
            "idle_seconds": round(self.idle_seconds, 3),
            "reason": self.reason,
            "expires_in_seconds": round(self.expires_in_seconds, 3),
        }


class LeaseBook:
    def __init__(
        self, clock: Callable[[], float] = time.time, run_keys: RunKeys | None = None
    ) -> None:
        self.clock = clock
        self.run_keys = run_keys or RunKeys(secrets.token_bytes(32))
        self._leases: dict[str, Lease] = {}
        self._released: dict[str, float] = {}  # lease id -> until when it is remembered
        self._drain: Drain | None = None

    def live(self) -> list[Lease]:
        now = self.clock()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires_at <= now]:
            del self._leases[lease_id]
        return sorted(self._leases.values(), key=lambda lease: lease.acquired_at)

    def acquire(
        self, holder: object, ttl_seconds: object, run_key: object = None, lease_id: object = None
    ) -> tuple[Lease, str | None]:
        """A new lease, and the per-run key minted with it when ``run_key`` asks for one
        (``true`` or ``{"models": [...]}``); the key is shown here only. With ``lease_id``
        (the client's, the same on every replica), a live lease of that id is renewed."""
        if not isinstance(holder, str) or not holder.strip():
            raise LeaseError("holder: give a non-empty string naming who holds the lease")
        if len(holder) > MAX_HOLDER_LENGTH:
            raise LeaseError(f"holder: at most {MAX_HOLDER_LENGTH} characters")
        if lease_id is not None and not (
            isinstance(lease_id, str) and LEASE_ID.fullmatch(lease_id)
        ):
            raise LeaseError("id: 8 to 64 letters, digits, '_' or '-'")
        ttl = _ttl(ttl_seconds)
        wants_key, models = _run_key_models(run_key)
        drain = self.draining()
        if drain is not None:
            raise Draining(
                f"the server is being stopped ({drain.reason}); start it again and take a "
                "lease then"
            )
        if lease_id is not None and self._is_released(lease_id):
            raise LeaseError(f"id: lease {lease_id} was released; take a new one")
        now = self.clock()
        known = next((x for x in self.live() if x.id == lease_id), None)
        if known is not None and known.holder != holder.strip():
            raise LeaseError(f"id: lease {lease_id} is held by someone else")
        lease = known or Lease(
            lease_id if isinstance(lease_id, str) else "lse_" + secrets.token_urlsafe(12),
            holder.strip(),
            now,
            now + ttl,
        )
        lease.expires_at = now + ttl
        key: str | None = None
        if wants_key:
            lease.keyed, lease.models = True, models
            key = self.run_keys.mint(RunKeyClaim(lease.id, lease.holder, models, lease.expires_at))
        self._leases[lease.id] = lease
        return lease, key

    def renew(self, lease_id: str, ttl_seconds: object) -> Lease | None:
        """Extend a live lease to ``ttl_seconds`` from now; None when it is gone."""
        ttl = _ttl(ttl_seconds)
        lease = next((lease for lease in self.live() if lease.id == lease_id), None)
        if lease is not None:
            lease.expires_at = self.clock() + ttl
        return lease

    def release(self, lease_id: str) -> tuple[dict[str, object] | None, int]:
        """Drop the lease; (the lease as it was, with how long it was held, when it was
        live; how many live leases remain)."""
        now = self.clock()
        live = {lease.id: lease for lease in self.live()}
        lease = live.pop(lease_id, None)
        self._leases.pop(lease_id, None)
        self._remember_released([lease_id])
        if lease is None:
            return None, len(live)
        return lease.released_view(now), len(live)

    def run_key(self, presented: bytes) -> KeyEntry | None:
        """The identity of a per-run key, while its lease lives: live in this book (renewals
        count), or not yet ended by the key's own clock and never released here (a replica
        that did not see the lease taken)."""
        claim = self.run_keys.read(presented)
        return None if claim is None else self.claim_entry(claim)

    def claim_entry(self, claim: RunKeyClaim) -> KeyEntry | None:
        """The identity of a genuine per-run key's claim, while its lease lives."""
        if self._is_released(claim.lease_id):
            return None
        live = any(lease.id == claim.lease_id for lease in self.live())
        if not live and claim.expires_at <= self.clock():
            return None
        return KeyEntry(
            _key_name(claim.holder), b"", models=claim.models, source=f"lease {claim.lease_id}",
            claim=claim,
        )  # fmt: skip

    def _remember_released(self, lease_ids: Iterable[str]) -> None:
        now = self.clock()
        for stale in [i for i, until in self._released.items() if until <= now]:
            del self._released[stale]
        for lease_id in lease_ids:
            if len(self._released) >= MAX_RELEASED:
                oldest = min(self._released, key=self._released.__getitem__)
                del self._released[oldest]
            self._released[lease_id] = now + MAX_TTL_SECONDS

    def _is_released(self, lease_id: str) -> bool:
        until = self._released.get(lease_id)
        return until is not None and until > self.clock()

    # -- draining -----------------------------------------------------------------------

    def draining(self) -> Drain | None:
        if self._drain is not None and self._drain.until <= self.clock():
            self._drain = None
        return self._drain

    def drain(
        self,
        *,
        release: str | Iterable[str] = (),
        holder: str | None = None,
        inflight: int,
        last_activity: float,
        idle_seconds: float | None = None,
        ttl_seconds: object = 900,
        reason: str = "no live lease and nothing in flight",
        wait_inflight: bool = False,
    ) -> DrainDecision:
        """Release the leases ``release`` names (and every lease of ``holder``), then drain
        if nothing is left: no live lease, nothing in flight (unless ``wait_inflight``: the
        caller waits for those requests itself, the drain refusing new leases meanwhile)
        and, when ``idle_seconds`` is given, no request for that long. One step: nothing can
        take a lease between the count and the decision."""
        ttl = _ttl(ttl_seconds)
        now = self.clock()
        named = {release} if isinstance(release, str) else set(release)
        released = [
            lease
            for lease in self.live()
            if lease.id in named or (holder is not None and lease.holder == holder)
        ]
        for lease in released:
            del self._leases[lease.id]
        self._remember_released(named | {lease.id for lease in released})
        live = self.live()
        idle = max(0.0, now - last_activity) if not inflight else 0.0
        decision = DrainDecision(
            False,
            [lease.id for lease in released],
            len(live),
            inflight,
            idle,
            "",
            holders=[x.holder for x in live],
            released_leases=[lease.released_view(now) for lease in released],
            leases=[x.view(now) for x in live],
        )
        if live:
            decision.reason = f"{len(live)} live lease(s): " + ", ".join(decision.holders)
        elif inflight and not wait_inflight:
            decision.reason = f"{inflight} request(s) in flight"
        elif idle_seconds is not None and idle < idle_seconds:
            decision.reason = f"idle {idle:.0f}s, less than {idle_seconds:.0f}s"
        else:
            current = self.draining()
            if current is None or current.until < now + ttl:
                self._drain = Drain(current.since if current else now, now + ttl, reason)
            decision.draining = True
            decision.reason = reason
            decision.expires_in_seconds = ttl
        return decision

    def cancel_drain(self) -> bool:
        """End a drain (the stop was called off); whether one was in force."""
        was = self.draining() is not None
        self._drain = None
        return was

    def view(self) -> list[dict[str, object]]:
        now = self.clock()
        return [lease.view(now) for lease in self.live()]

    def drain_view(self) -> dict[str, object] | None:
        drain = self.draining()
        return None if drain is None else drain.view(self.clock())


def _ttl(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LeaseError("ttl_seconds: give a number of seconds")
    if not 1 <= value <= MAX_TTL_SECONDS:
        raise LeaseError(f"ttl_seconds: between 1 and {MAX_TTL_SECONDS} (7 days)")
    return float(value)


def _run_key_models(value: object) -> tuple[bool, frozenset[str] | None]:
    """Whether a per-run key is wanted, and its models (None: every model)."""
    if value is None or value is False:
        return False, None
    if value is True:
        return True, None
    models = value.get("models") if isinstance(value, dict) else None
    if models is None and isinstance(value, dict):
        return True, None
    if (
        not isinstance(models, list)
        or not models
        or len(models) > MAX_RUN_KEY_MODELS
        or not all(isinstance(m, str) and m.strip() for m in models)
    ):
        raise LeaseError(
            f'key: give true, or {{"models": [...]}} with 1 to {MAX_RUN_KEY_MODELS} model names'
        )
    return True, frozenset(canonical(m.strip()) for m in models)
