"""The watchdog inside the server: with ``ONDEMAND_IDLE_STOP`` and/or
``ONDEMAND_MAX_LIFETIME`` set (and the provider's credentials in its environment), the
server stops its own deployment through the provider's API when it has been idle with no
live lease, or has run longer than its max lifetime.

It decides with the same drain step as ``down`` (so a job taking a lease at that moment
wins), and it needs no runner, cron or network path to the server: the one backstop that
still works when every CI job was cancelled.

With several replicas, one replica's quiet says nothing about its siblings' requests and
leases: an idle replica then asks them all through the deployment's public URL, as the
watchdog does (``watch_once``), and the deployment stops only if every one agrees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ondemand.proxy.app import ProxyApp
    from ondemand.serve.settings import ServeSettings

log = logging.getLogger("ondemand.serve")

Stopper = Callable[[], None]


class Deployment:
    """This server's deployment, through the provider credentials in its environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        from ondemand.config import load_config
        from ondemand.lifecycle import make_provider

        self.resolved = load_config(path=None, env=env, flags={}, cwd=None)
        self.provider = make_provider(self.resolved, env)
        self.name = self.resolved.config.name

    def stop(self) -> None:
        self.provider.stop(self.name)

    def replicas(self) -> int:
        return self.provider.status(self.name).replicas or 1

    def stop_if_every_replica_is_idle(self, idle_seconds: float) -> str | None:
        """The watchdog's check over every replica; the reason when it stopped."""
        from ondemand.watchdog import watch_once

        def telling(reason: str) -> None:
            log.warning("stopping this deployment through the provider: %s (every replica)",
                        reason)  # fmt: skip

        verdict = watch_once(
            self.resolved, self.provider, idle_seconds=idle_seconds,
            max_lifetime_seconds=self.resolved.config.max_lifetime.total_seconds(),
            # This server is one of those being stopped: it cannot wait to see them all
            # gone, and a thread left waiting would hold its exit until it is killed.
            before_stop=telling, verify=False,
        )  # fmt: skip
        return f"{verdict.reason} (every replica)" if verdict.action == "stopped" else None


def this_deployment(env: Mapping[str, str]) -> Deployment | None:
    """``ONDEMAND_NAME`` on ``ONDEMAND_PROVIDER``; None on this machine (``local``), where
    there is no bill to stop. Built at start-up, so a missing credential is a start-up
    error, not a surprise at 3 a.m."""
    from ondemand.config import load_config

    if load_config(path=None, env=env, flags={}, cwd=None).config.provider == "local":
        return None
    return Deployment(env)


class SelfStop:
    def __init__(
        self,
        proxy: ProxyApp,
        stopper: Stopper,
        *,
        deployment: Deployment | None = None,
        idle_seconds: float | None,
        max_lifetime_seconds: float | None,
        interval: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.proxy = proxy
        self.stopper = stopper
        self.deployment = deployment
        self.idle_seconds = idle_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self.interval = interval
        self.clock = clock or proxy.clock
        self.stopped_because: str | None = None

    @classmethod
    def from_settings(cls, proxy: ProxyApp, settings: ServeSettings) -> SelfStop | None:
        """From ``ONDEMAND_IDLE_STOP`` and ``ONDEMAND_MAX_LIFETIME`` as the server read them;
        the deployment comes from the provider settings in ``settings.proxy.env``."""
        idle, lifetime = settings.idle_stop, settings.max_lifetime
        env = settings.proxy.env
        if idle is None and lifetime is None:
            return None
        deployment = this_deployment(env)
        if deployment is None:
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
            deployment.stop,
            deployment=deployment,
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
            if self.deployment is not None and await _has_siblings(self.deployment):
                proxy.leases.cancel_drain()  # the check over every replica drains this one too
                return await self._stop_if_all_idle(self.deployment, self.idle_seconds)
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

    async def _stop_if_all_idle(self, deployment: Deployment, idle: float) -> str | None:
        try:
            reason = await asyncio.to_thread(deployment.stop_if_every_replica_is_idle, idle)
        except Exception as exc:
            log.error("could not check or stop this deployment (will try again): %s", exc)
            return None
        if reason is not None:
            self.stopped_because = reason
        return reason


async def _has_siblings(deployment: Deployment) -> bool:
    try:
        return await asyncio.to_thread(deployment.replicas) > 1
    except Exception as exc:  # the provider cannot say: ask them all, which may fail too
        log.error("could not count this deployment's replicas: %s", exc)
        return True
