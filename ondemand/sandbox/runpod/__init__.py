"""A RunPod emulator: REST v2 (``/v2/...``) and its data planes on loopback, whose
serverless workers and pods are real ``ondemand serve`` processes.

Written from ``/work/shared/reference/runpod.md`` (the reference) and RunPod's v2 OpenAPI
spec, not from any client. Mounted under ``/runpod`` in the sandbox; with ``S`` the
sandbox's URL, each path stands in for a host of the platform:

=================================  ===============================================
``S/runpod``                       ``https://api.runpod.io`` (REST v2, ``/v2/...``)
``S/runpod/lb/<id>/<path>``        ``https://<id>.api.runpod.ai/<path>`` (load balancer)
``S/runpod/ai/v2/<id>/health``     ``https://api.runpod.ai/v2/<id>/health``
``S/runpod/proxy/<pod>-<port>/…``  ``https://<pod>-<port>.proxy.runpod.net/…``
=================================  ===============================================

REST v2 routes (``Authorization: Bearer <key>``; errors ``application/problem+json``
``{title, status, detail[, errors]}``; unknown body fields 422):

- ``/v2/serverless`` GET (``{"endpoints"}``), POST (201); ``/v2/serverless/{id}`` GET,
  PATCH, DELETE (204); ``/v2/serverless/{id}/workers`` GET.
- ``/v2/pods`` GET (``{"pods"}``), POST (201); ``/v2/pods/{id}`` GET, PATCH, DELETE (204);
  ``/v2/pods/{id}/action`` POST ``{"action": "start|stop|restart|terminate"}`` (200 Pod,
  204 for terminate, 409 when the status does not allow it).
- ``/v2/network-volumes`` GET (``{"networkVolumes"}``), POST (201);
  ``/v2/network-volumes/{id}`` GET, PATCH, DELETE (204).
- ``/v2/catalog/gpus[/{id}]``, ``/v2/catalog/datacenters[/{id}]``.

How workers scale and become ready: ``fleet``; pods: ``pods``; the data planes:
``gateway``; faults: ``ondemand.sandbox.faults``; user documentation: docs/sandbox.md.
"""

from __future__ import annotations

from pathlib import Path

from ondemand.sandbox.apps import AppRunner
from ondemand.sandbox.faults import FaultSet
from ondemand.sandbox.runpod.app import RunPodApi
from ondemand.sandbox.runpod.engine import RunPodEngine

__all__ = ["RunPodApi", "RunPodEngine", "create_emulator"]


def create_emulator(
    directory: Path,
    runner: AppRunner,
    faults: FaultSet | None = None,
    *,
    operator_token: str,
    read_token: str,
    transition_seconds: float = 0.3,
    probe_period: float = 1.0,
    no_worker_wait: float = 120.0,
    proxy_timeout: float = 100.0,
) -> RunPodApi:
    """The RunPod emulator keeping its state in ``directory``; an ASGI app (``.engine``
    holds the state). Serve it with lifespan on, or call ``engine.begin()`` on the serving
    loop and ``aclose()`` at the end."""
    fault_set = faults if faults is not None else FaultSet("runpod")
    engine = RunPodEngine(
        directory, runner, fault_set,
        transition_seconds=transition_seconds, probe_period=probe_period,
        no_worker_wait=no_worker_wait, proxy_timeout=proxy_timeout,
    )  # fmt: skip
    return RunPodApi(engine, fault_set, operator_token=operator_token, read_token=read_token)
