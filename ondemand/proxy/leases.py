"""Leases: who still needs this server. A CI job takes one before its tests and releases it
after; the deployment may stop only when none is left.

The server's clock alone decides expiry, so a runner whose clock is off cannot make a lease
last longer or end sooner: clients get ``expires_in_seconds`` besides ``expires_at``. An
expired lease is gone on the next look, without a sweeper. Leases live in the proxy's
memory: they survive an Ollama restart, and a server restart (the deployment was stopped)
starts with none. Every operation runs on the event loop without awaiting, so release and
its ``remaining`` count are one atomic step.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ondemand.proxy.activity import iso_utc

MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_HOLDER_LENGTH = 200


class LeaseError(ValueError):
    """A request the lease book refuses; the message says why."""


@dataclass
class Lease:
    id: str
    holder: str
    acquired_at: float
    expires_at: float

    def view(self, now: float) -> dict[str, object]:
        return {
            "id": self.id,
            "holder": self.holder,
            "acquired_at": iso_utc(self.acquired_at),
            "expires_at": iso_utc(self.expires_at),
            "expires_in_seconds": round(max(0.0, self.expires_at - now), 3),
        }


class LeaseBook:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._leases: dict[str, Lease] = {}

    def live(self) -> list[Lease]:
        now = self.clock()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires_at <= now]:
            del self._leases[lease_id]
        return sorted(self._leases.values(), key=lambda lease: lease.acquired_at)

    def acquire(self, holder: object, ttl_seconds: object) -> Lease:
        if not isinstance(holder, str) or not holder.strip():
            raise LeaseError("holder: give a non-empty string naming who holds the lease")
        if len(holder) > MAX_HOLDER_LENGTH:
            raise LeaseError(f"holder: at most {MAX_HOLDER_LENGTH} characters")
        ttl = _ttl(ttl_seconds)
        now = self.clock()
        lease = Lease("lse_" + secrets.token_urlsafe(12), holder.strip(), now, now + ttl)
        self._leases[lease.id] = lease
        return lease

    def renew(self, lease_id: str, ttl_seconds: object) -> Lease | None:
        """Extend a live lease to ``ttl_seconds`` from now; None when it is gone."""
        ttl = _ttl(ttl_seconds)
        lease = next((lease for lease in self.live() if lease.id == lease_id), None)
        if lease is not None:
            lease.expires_at = self.clock() + ttl
        return lease

    def release(self, lease_id: str) -> tuple[bool, int]:
        """Drop the lease; (whether it was live, how many live leases remain)."""
        live = {lease.id for lease in self.live()}
        released = lease_id in live
        self._leases.pop(lease_id, None)
        return released, len(live) - released

    def view(self) -> list[dict[str, object]]:
        now = self.clock()
        return [lease.view(now) for lease in self.live()]


def _ttl(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LeaseError("ttl_seconds: give a number of seconds")
    if not 1 <= value <= MAX_TTL_SECONDS:
        raise LeaseError(f"ttl_seconds: between 1 and {MAX_TTL_SECONDS} (7 days)")
    return float(value)
