"""The model cache on platforms that copy a bucket in at start and never back (OVH AI
Deploy): after a start that pulled models, ``up`` asks the provider to push the store to the
bucket, and ``down`` lets that push finish before it stops the server.

The CLI does this, not the server: pushing takes the provider's API token, which the image
does not carry (only ``ONDEMAND_IDLE_STOP`` puts credentials in its environment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ondemand.errors import ReadyTimeoutError
from ondemand.providers.base import wait_until

if TYPE_CHECKING:
    from ondemand.lifecycle.deployment import Progress
    from ondemand.providers.base import CacheSync, Provider


def pulled(models: Sequence[dict[str, Any]]) -> list[str]:
    """The models the server pulled in this run: those not found in its model cache."""
    return [str(m.get("name")) for m in models if m.get("cached") is False]


def save_after_pulls(
    provider: Provider, name: str, models: Sequence[dict[str, Any]], progress: Progress
) -> str | None:
    """Push the model store when this run pulled models; the note to report, or None."""
    names = pulled(models)
    if not names:
        return None
    sync = provider.save_model_cache(name)
    if sync is None:
        return None
    note = (
        f"{', '.join(names)} pulled in this run: pushing the model store to {sync.where} "
        f"(data sync {sync.state}) so the next start finds them there"
    )
    progress(note)
    return note


def finish_cache_sync(
    provider: Provider, name: str, *, timeout: float, progress: Progress
) -> str | None:
    """Before a stop: wait (up to ``timeout``) for a push still under way, since a stop
    interrupts it; what to say about it, or None when none was under way."""
    sync = provider.model_cache_sync(name)
    if sync is None or sync.finished:
        return None
    progress(f"{name}: waiting for the model cache push to {sync.where} ({sync.state}) to end")
    try:
        last = wait_until(
            lambda: provider.model_cache_sync(name),
            lambda s: s is None or s.finished,
            timeout=timeout,
            what=f"the model cache push to {sync.where}",
            interval=0.5,
            max_interval=5.0,
        )
    except ReadyTimeoutError:
        return (
            f"the model cache push to {sync.where} had not ended after {timeout:.0f}s and "
            "the stop interrupts it: the next start pulls those models again"
        )
    return describe(last) if last is not None else None


def describe(sync: CacheSync) -> str:
    if sync.succeeded:
        return f"model cache pushed to {sync.where}"
    reason = f": {sync.detail}" if sync.detail else ""
    return f"the model cache push to {sync.where} ended {sync.state}{reason}"
