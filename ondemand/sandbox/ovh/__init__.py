"""An OVHcloud AI Deploy emulator: the regional AI API (``/v1/app...``) on loopback, whose
apps are real ``ondemand serve`` processes.

Written from ``/work/shared/reference/ovh-ai-deploy.md`` (the AI API, "A"), not from any
client. Mounted under ``/ovh`` in the sandbox, so a client's base URL is ``<sandbox>/ovh``.

Routes (``Authorization: Bearer <token>``; errors are ``{"message": "..."}``):

- ``POST /v1/app`` (AppSpec) → 200 App, state QUEUED. ``GET /v1/app`` → ``{"items",
  "metadata": {"currentPage", "pageCount", "total", "links": {"next"}}}`` with ``page``
  (from 1), ``size`` (100), ``statusState`` (repeatable), ``labelSelector`` (``k=v``,
  ``k!=v``, comma = and), ``updatedAfter``/``updatedBefore`` (unix seconds), ``sort``
  (``createdAt``, ``updatedAt``, ``name``, ``status.state``, …) and ``order`` (asc|desc).
- ``GET|PUT|DELETE /v1/app/{id}`` (PUT takes the flat UpdateInput; DELETE ``?force=true``)
  → 200 App / 204. ``PUT /v1/app/{id}/start|stop`` → 204. ``PUT .../label`` ``{name,
  value?}`` → 204 (no value removes). ``PUT .../scalingstrategy`` (one of ``fixed`` /
  ``automatic``) → 204. ``PUT .../image`` ``{url}`` → 200 text. ``GET
  .../log?tail=N&replica=I`` → replica I's server log as text; without ``replica``, every
  replica's, replica 0 first.
- ``GET /v1/me``, ``GET /v1/capabilities/flavor[/{id}]``.

States follow §2.5 of the reference: a create or start walks QUEUED → INITIALIZING →
SCALING → RUNNING; stop (from QUEUED, INITIALIZING, SCALING or RUNNING) walks STOPPING →
STOPPED; start is accepted from STOPPED and FAILED; delete needs STOPPED, FAILED or ERROR
unless ``force=true``, then DELETING → gone (404). Illegal transitions are 400. Apps keep
their URL (``http://127.0.0.1:<port>``) across stop and start. An app with N replicas runs N
servers; with more than one they sit behind a per-request load balancer on that URL
(``replicas.py``, ``balancer.py``). Faults: see ``ondemand.sandbox.faults``.
"""

from __future__ import annotations

from pathlib import Path

from ondemand.sandbox.apps import AppRunner
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.ovh.api import OvhApi
from ondemand.sandbox.ovh.engine import OvhEngine
from ondemand.sandbox.ovh.flavors import FLAVORS
from ondemand.sandbox.ovh.machine import ApiError
from ondemand.sandbox.ovh.model import STATES, AppRecord

__all__ = [
    "FLAVORS",
    "STATES",
    "ApiError",
    "AppRecord",
    "OvhApi",
    "OvhEngine",
    "create_emulator",
]


def create_emulator(
    directory: Path,
    runner: AppRunner,
    faults: FaultSet | None = None,
    *,
    operator_token: str,
    read_token: str,
    transition_seconds: float = 0.3,
    probe_period: float = 1.0,
) -> OvhApi:
    """The OVH emulator keeping its apps in ``directory``; an ASGI app (``.engine`` holds
    the apps). Serve it with lifespan on, or call ``engine.begin()`` on the serving loop."""
    engine = OvhEngine(
        directory,
        runner,
        faults if faults is not None else FaultSet(),
        transition_seconds=transition_seconds,
        probe_period=probe_period,
    )
    return OvhApi(engine, engine.faults, operator_token=operator_token, read_token=read_token)
