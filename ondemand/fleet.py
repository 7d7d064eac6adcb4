"""Every server behind one URL: one, or several replicas behind a load balancer.

With several replicas (an OVH app scaled to N) each keeps its own lease book and counts
its own requests, and the load balancer in front picks a replica per request, with no
stickiness. A lease therefore has to be taken, released and drained on every replica, and
"nothing in flight" has to hold on every one. ``Fleet.each`` sends the same request until
as many distinct replicas as the provider reports have answered (each names itself in
``X-Ondemand-Replica``), on a new connection each time, so a balancer that balances
connections rather than requests is covered too. Every request it repeats is idempotent
on the server (renew, release again, drain again), so reaching one replica twice is
harmless. With one server it is one request, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from ondemand.serverapi import Answer, ServerApi

Call = Callable[[ServerApi], Answer]
# Give up on a silent URL after this many failures in a row.
_FAILURES_IN_A_ROW = 3


def attempts_for(replicas: int) -> int:
    """Requests that reach each of ``replicas`` at least once with probability above
    1 - 1e-6 when the balancer picks at random (the coupon collector's tail: n ln n +
    n ln(1e6)); a round-robin balancer needs only ``replicas``."""
    if replicas <= 1:
        return 1
    return math.ceil(replicas * (math.log(replicas) + math.log(1e6))) + 2


@dataclass
class Sweep:
    """What every replica answered to one request (a replica may answer more than once)."""

    expected: int
    answers: list[Answer] = field(default_factory=list)
    failures: list[Answer] = field(default_factory=list)  # no server answered

    @property
    def replicas(self) -> set[str]:
        return {a.replica or "" for a in self.answers}

    @property
    def complete(self) -> bool:
        """Every replica the provider reports answered at least once."""
        return bool(self.answers) and len(self.replicas) >= self.expected

    def latest(self) -> dict[str, Answer]:
        """Each replica's last answer."""
        return {a.replica or "": a for a in self.answers}

    def first_failure(self) -> Answer | None:
        bad = [a for a in self.answers if not a.ok] + self.failures
        return bad[0] if bad else None


class Fleet:
    def __init__(
        self,
        url: str,
        admin_key: str,
        headers: Mapping[str, str] | None = None,
        *,
        replicas: int | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.expected = max(1, replicas or 1)
        self.api = ServerApi(
            url,
            admin_key,
            headers,
            timeout=timeout,
            transport=transport,
            fresh_connections=self.expected > 1,
        )

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def one(self, call: Call) -> Answer:
        """Ask whichever replica the balancer picks."""
        return call(self.api)

    def each(self, call: Call) -> Sweep:
        """Ask every replica: repeat ``call`` until ``expected`` replicas answered."""
        sweep = Sweep(self.expected)
        failures_in_a_row = 0
        for _ in range(attempts_for(self.expected)):
            answer = call(self.api)
            if answer.kind == "unreachable":
                sweep.failures.append(answer)
                failures_in_a_row += 1
                if failures_in_a_row >= _FAILURES_IN_A_ROW:
                    break
                continue
            failures_in_a_row = 0
            sweep.answers.append(answer)
            # A server that names no replica cannot be told from its twins: one answer is
            # all there is to have.
            if sweep.complete or answer.replica is None:
                break
        return sweep
