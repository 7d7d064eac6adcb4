"""The watchdog inside the server: with ``ONDEMAND_IDLE_STOP`` and/or
``ONDEMAND_MAX_LIFETIME`` set (and the provider's credentials in its environment), the
server stops its own deployment through the provider's API when it has been idle with no
live lease, or has run longer than its max lifetime.

It decides with the same drain step as ``down`` (so a job taking a lease at that moment
wins), and it needs no runner, cron or network path to the server: the one backstop that
still works when every CI job was cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ondemand.configtypes import parse_duration
from ondemand.errors import ConfigError

if TYPE_CHECKING:
    from ondemand.proxy.app import ProxyApp

log = logging.getLogger("ondemand.serve")

Stopper = Callable[[], None]


def _duration(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        seconds = parse_duration(raw).total_seconds()
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a duration", hint="write e.g. 30m or 8h") from exc
    return seconds if seconds > 0 else None


def provider_stopper(env: Mapping[str, str]) -> Stopper | None:
    """Stop this deployment (``ONDEMAND_NAME`` on ``ONDEMAND_PROVIDER``) with the provider
    credentials in the server's environment; None on this machine (``local``), where there
    is no bill to stop. Built at start-up, so a missing credential is a start-up error,
    not a surprise at 3 a.m."""
    from ondemand.config import load_config
    from ondemand.lifecycle import make_provider

    resolved = load_config(path=None, env=env, flags={}, cwd=None)
    if resolved.config.provider == "local":
        return None
    provider = make_provider(resolved, env)
    name = resolved.config.name

    def stop() -> None:
        provider.stop(name)

    return stop


class SelfStop:
    def __init__(
        self,
        proxy: ProxyApp,
        stopper: Stopper,
        *,
        idle_seconds: float | None,
        max_lifetime_seconds: float | None,
        interval: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.proxy = proxy
        self.stopper = stopper
        self.idle_seconds = idle_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self.interval = interval
        self.clock = clock or proxy.clock
        self.stopped_because: str | None = None

    @classmethod
    def from_env(cls, proxy: ProxyApp, env: Mapping[str, str]) -> SelfStop | None:
        idle = _duration(env, "ONDEMAND_IDLE_STOP")
        lifetime = _duration(env, "ONDEMAND_MAX_LIFETIME")
        if idle is None and lifetime is None:
            return None
        stopper = provider_stopper(env)
        if stopper is None:
            log.warning(
                "ONDEMAND_IDLE_STOP / ONDEMAND_MAX_LIFETIME are ignored: ONDEMAND_PROVIDER does "
                "not name a cloud deployment this server could stop"
            )
            return None
        # Checks come often enough that a stop lands within a few percent of the limit.
        shortest = min(x for x in (idle, lifetime) if x is not None)
        # In real seconds: a scaled clock (rehearsal) checks as often in its own time.
        interval = max(0.05, min(30.0, shortest / 10) / proxy.settings.clock_scale)
        return cls(
            proxy,
            stopper,
            idle_seconds=idle,
            max_lifetime_seconds=lifetime,
            interval=interval,
        )

    async def run(self) -> None:
        while self.stopped_because is None:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> str | None:
        """One look; the reason it stopped the deployment, or None."""
        proxy = self.proxy
        uptime = self.clock() - proxy.activity.started_at
        drained = False
        # Max lifetime counts from the process start; idle time only once the models are
        # ready (see ProxyApp.activity_now).
        if self.max_lifetime_seconds is not None and uptime > self.max_lifetime_seconds:
            reason = f"past its max lifetime ({uptime / 3600:.1f} h)"
        elif self.idle_seconds is not None:
            inflight, last = proxy.activity_now()
            decision = proxy.leases.drain(
                inflight=inflight,
                last_activity=last,
                idle_seconds=self.idle_seconds,
                ttl_seconds=600,
                reason="idle, no live lease (server watchdog)",
            )
            if not decision.draining:
                return None
            drained = True
            reason = f"idle {decision.idle_seconds:.0f}s with no live lease"
        else:
            return None
        log.warning("stopping this deployment through the provider: %s", reason)
        try:
            await asyncio.to_thread(self.stopper)
        except Exception as exc:  # a provider hiccup: serve on, look again next time
            log.error("could not stop this deployment (will try again): %s", exc)
            if drained:
                proxy.leases.cancel_drain()
            return None
        self.stopped_because = reason
        return reason
