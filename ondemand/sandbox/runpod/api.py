"""REST v2's HTTP surface (``/v2/...``): routes, API keys, problem bodies, rate headers.

Keys: the sandbox's operator token is a full-access RunPod API key; its read token is a
read-only key (GET works, anything else 403). A missing or unknown key is 401. Every
authenticated answer carries the ``RateLimit`` and ``RateLimit-Policy`` headers of the
spec; the quota is generous and not enforced (an ``http`` fault rehearses a 429).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ondemand.sandbox.http import Answer, Dialect, FrontEnd, Request, Route
from ondemand.sandbox.runpod import catalog
from ondemand.sandbox.runpod.gateway import bearer
from ondemand.sandbox.runpod.model import TERMINATED
from ondemand.sandbox.runpod.problems import ApiError, render
from ondemand.sandbox.runpod.ratelimit import RateLimiter
from ondemand.sandbox.vendor.openapi import RUNPOD, document

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.runpod.engine import RunPodEngine

OPERATOR, READ = "operator", "read"
_NOT_ALLOWED = "The requested method is not allowed for this path."
_WINDOWS = (("minute", 60, 1000), ("hour", 3600, 30000), ("day", 86400, 500000))


def _created(engine: RunPodEngine, payload: Any) -> Answer:
    if engine.faults.take("created_then_500"):
        raise ApiError(500, "internal server error")
    return 201, payload


# -- serverless ----------------------------------------------------------------------------


async def list_endpoints(engine: RunPodEngine, request: Request) -> Answer:
    return 200, {"endpoints": [e.to_api(request.base) for e in engine.endpoints.values()]}


async def create_endpoint(engine: RunPodEngine, request: Request) -> Answer:
    return _created(engine, engine.create_endpoint(request.json()).to_api(request.base))


async def get_endpoint(engine: RunPodEngine, request: Request) -> Answer:
    return 200, engine.find_endpoint(request.params["id"]).to_api(request.base)


async def update_endpoint(engine: RunPodEngine, request: Request) -> Answer:
    endpoint = engine.find_endpoint(request.params["id"])
    return 200, engine.update_endpoint(endpoint.id, request.json()).to_api(request.base)


async def delete_endpoint(engine: RunPodEngine, request: Request) -> Answer:
    engine.delete_endpoint(request.params["id"])
    return 204, None


async def endpoint_workers(engine: RunPodEngine, request: Request) -> Answer:
    endpoint = engine.find_endpoint(request.params["id"])
    workers = [w.to_api(endpoint.version) for w in engine.fleet.of(endpoint.id)]
    summary = {
        key.lower(): sum(1 for w in workers if w["status"] == key)
        for key in ("RUNNING", "IDLE", "INITIALIZING", "THROTTLED", "UNHEALTHY")
    }
    summary["total"] = len(workers)
    return 200, {"workers": workers, "summary": summary, "endpointVersion": endpoint.version}


# -- pods ----------------------------------------------------------------------------------


async def list_pods(engine: RunPodEngine, _request: Request) -> Answer:
    return 200, {"pods": [p.to_api() for p in engine.pods.values() if p.status != TERMINATED]}


async def create_pod(engine: RunPodEngine, request: Request) -> Answer:
    return _created(engine, engine.create_pod(request.json()).to_api())


async def get_pod(engine: RunPodEngine, request: Request) -> Answer:
    return 200, engine.find_pod(request.params["id"]).to_api()


async def update_pod(engine: RunPodEngine, request: Request) -> Answer:
    engine.find_pod(request.params["id"])
    return 200, engine.update_pod(request.params["id"], request.json()).to_api()


async def delete_pod(engine: RunPodEngine, request: Request) -> Answer:
    engine.delete_pod(request.params["id"])
    return 204, None


async def pod_action(engine: RunPodEngine, request: Request) -> Answer:
    engine.find_pod(request.params["id"])
    # The vendor's PodActionRequest has been checked: ``action`` is one of its PodAction.
    action: str = request.json()["action"]
    pod = engine.pod_action(request.params["id"], action)
    return (204, None) if action == "terminate" else (200, pod.to_api())


# -- network volumes -----------------------------------------------------------------------


async def list_volumes(engine: RunPodEngine, _request: Request) -> Answer:
    return 200, {"networkVolumes": [v.to_api() for v in engine.volumes.values()]}


async def create_volume(engine: RunPodEngine, request: Request) -> Answer:
    return 201, engine.create_volume(request.json()).to_api()


async def get_volume(engine: RunPodEngine, request: Request) -> Answer:
    return 200, engine.find_volume(request.params["id"]).to_api()


async def update_volume(engine: RunPodEngine, request: Request) -> Answer:
    engine.find_volume(request.params["id"])
    return 200, engine.update_volume(request.params["id"], request.json()).to_api()


async def delete_volume(engine: RunPodEngine, request: Request) -> Answer:
    engine.delete_volume(request.params["id"])
    return 204, None


# -- catalog -------------------------------------------------------------------------------


async def list_gpus(_engine: RunPodEngine, request: Request) -> Answer:
    availability = "AVAILABILITY" in request.listed("include")
    return 200, {"gpus": [gpu.to_api(availability) for gpu in catalog.GPUS.values()]}


async def get_gpu(_engine: RunPodEngine, request: Request) -> Answer:
    gpu = catalog.GPUS.get(request.params["id"])
    if gpu is None:
        raise ApiError(404, f"GPU type {request.params['id']} not found")
    return 200, gpu.to_api("AVAILABILITY" in request.listed("include"))


async def list_data_centers(_engine: RunPodEngine, request: Request) -> Answer:
    regions = set(request.listed("regions"))
    volume_types = set(request.listed("networkVolumeTypes"))
    network = request.listed("globalNetwork")
    found = [
        dc.to_api()
        for dc in catalog.DATA_CENTERS
        if (not regions or dc.region in regions)
        and volume_types <= set(dc.volume_types)
        and (not network or dc.global_network == (network[-1].lower() == "true"))
    ]
    return 200, {"dataCenters": found}


async def get_data_center(_engine: RunPodEngine, request: Request) -> Answer:
    dc = catalog.DATA_CENTER_IDS.get(request.params["id"])
    if dc is None:
        raise ApiError(404, f"data center {request.params['id']} not found")
    return 200, dc.to_api()


ROUTES: list[Route[RunPodEngine]] = [
    Route("/v2/serverless", GET=list_endpoints, POST=create_endpoint),
    Route("/v2/serverless/{id}", GET=get_endpoint, PATCH=update_endpoint, DELETE=delete_endpoint),
    Route("/v2/serverless/{id}/workers", GET=endpoint_workers),
    Route("/v2/pods", GET=list_pods, POST=create_pod),
    Route("/v2/pods/{id}", GET=get_pod, PATCH=update_pod, DELETE=delete_pod),
    Route("/v2/pods/{id}/action", POST=pod_action),
    Route("/v2/network-volumes", GET=list_volumes, POST=create_volume),
    Route("/v2/network-volumes/{id}", GET=get_volume, PATCH=update_volume, DELETE=delete_volume),
    Route("/v2/catalog/gpus", GET=list_gpus),
    Route("/v2/catalog/gpus/{id}", GET=get_gpu),
    Route("/v2/catalog/datacenters", GET=list_data_centers),
    Route("/v2/catalog/datacenters/{id}", GET=get_data_center),
]


class RateHeaders:
    """The spec's ``RateLimit`` / ``RateLimit-Policy`` headers, counted per fixed window."""

    def __init__(self) -> None:
        self._used: dict[str, tuple[int, int]] = {}

    def take(self) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        state, policy = [], []
        for name, length, quota in _WINDOWS:
            window = now // length
            start, used = self._used.get(name, (window, 0))
            used = used + 1 if start == window else 1
            self._used[name] = (window, used)
            left = length - now % length
            state.append(f'"{name}";r={max(0, quota - used)};t={left}')
            policy.append(f'"{name}";q={quota};w={length}')
        return [(b"ratelimit", ", ".join(state).encode()),
                (b"ratelimit-policy", ", ".join(policy).encode())]  # fmt: skip


class RestApi:
    """``/v2/...`` of the emulated REST API."""

    def __init__(self, engine: RunPodEngine, *, operator_token: str, read_token: str) -> None:
        self.engine = engine
        self.rates = RateHeaders()
        self.limiter = RateLimiter()
        """Replaceable: tests give the sandbox a quota or a clock of their own."""
        self.front = FrontEnd(
            engine,
            ROUTES,
            Dialect(
                roles={operator_token: OPERATOR, read_token: READ},
                render=render,
                # Shape errors are 422 with one string per failure in "errors" (the spec's
                # UnprocessableEntityError and ErrorResponse).
                document=document(RUNPOD),
                invalid_status=422,
                unauthorized=lambda key: (
                    "missing bearer token" if key is None else "invalid bearer token"
                ),
                read_only_text="access denied: this API key is read-only",
                not_allowed_text=lambda _m, _a: _NOT_ALLOWED,
                key=bearer,
                headers=self._admit,
            ),
        )

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, path: str, base: str
    ) -> None:
        await self.front(scope, receive, send, path, base)

    def _admit(self, key: str) -> list[tuple[bytes, bytes]]:
        """Count the call against its key's quota (429 past it), then the rate headers."""
        refusal = self.limiter.refusal(key)
        if refusal is not None:
            raise refusal
        return self.rates.take()
