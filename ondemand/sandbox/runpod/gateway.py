"""The serverless and pod data planes, each under a path that stands in for its host.

- ``/lb/<id>/<path>`` for ``https://<id>.api.runpod.ai/<path>``: the load balancer. Needs
  ``Authorization: Bearer <RunPod API key>`` (401 ``{"error": ...}`` without); that header
  is not passed on (``X-API-Key`` and everything else is). It routes only to workers whose
  health probe answered 200, the least busy first, and answers ``X-Runpod-Worker-Id``. With
  no ready worker the request waits while the scaler starts one, up to ``no_worker_wait``
  seconds (the platform's 2 minutes), then 400 ``{"error": "no workers available"}``, the
  status the platform was seen to give ("400 timed out waiting for worker"); with
  ``workers.max`` 0 that answer comes at once. A queue-based endpoint answers
  ``{"error": "not allowed for QB API"}`` (400). Bodies above 30 MB are 413.
- ``/ai/v2/<id>/health`` for ``https://api.runpod.ai/v2/<id>/health``: jobs and workers.
- ``/proxy/<podId>-<port>/<path>`` for ``https://<podId>-<port>.proxy.runpod.net/<path>``:
  public (no key; ``Authorization`` goes to the pod's server). 502 until the pod is RUNNING
  and its server listens on that port (``<port>/http`` exposed and the service's port),
  524 when the response does not start within ``proxy_timeout`` seconds (Cloudflare's 100).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ondemand.asgi import BodyTooLarge, ClientDisconnected, header, read_body, send_json, send_text
from ondemand.sandbox.runpod.forward import (
    Unreachable,
    forward,
    new_client,
    request_headers,
    target_url,
)
from ondemand.sandbox.runpod.model import QUEUE, READY, RUNNING, TERMINATED, THROTTLED, UNHEALTHY

if TYPE_CHECKING:
    from ondemand.asgi import Receive, Scope, Send
    from ondemand.sandbox.runpod.engine import RunPodEngine

LB_BODY_LIMIT = 30 * 1000 * 1000
PROXY_BODY_LIMIT = 100 * 1000 * 1000
NO_WORKERS = {"error": "no workers available"}


def bearer(scope: Scope, *, bare: bool = False) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (or a bare key when ``bare``)."""
    raw = header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    return scheme if bare and not token else None


class Gateway:
    def __init__(self, engine: RunPodEngine, operator_token: str, read_token: str) -> None:
        self.engine = engine
        self.operator_token = operator_token
        self.read_token = read_token
        # Restricted keys (RunPod console, Settings → API Keys → Restricted): each may call
        # only the serverless endpoints it was given, and no REST route.
        self.restricted: dict[str, set[str]] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- load balancer ------------------------------------------------------------------

    async def load_balancer(
        self, scope: Scope, receive: Receive, send: Send, endpoint_id: str, path: str
    ) -> None:
        key = bearer(scope)
        scoped = key is not None and endpoint_id in self.restricted.get(key, set())
        if key != self.operator_token and not scoped:
            status = 403 if key == self.read_token or key in self.restricted else 401
            why = (
                "this API key has no access to this endpoint"
                if status == 403
                else ("missing or invalid API key")
            )
            hint = "send 'Authorization: Bearer <RunPod API key>'"
            await send_json(send, status, {"error": f"{why}: {hint}"})
            return
        endpoint = self.engine.endpoints.get(endpoint_id)
        if endpoint is None:
            await send_json(send, 404, {"error": f"endpoint {endpoint_id} not found"})
            return
        if endpoint.type == QUEUE:
            await send_json(send, 400, {"error": "not allowed for QB API"})
            return
        try:
            body = await read_body(receive, limit=LB_BODY_LIMIT)
        except BodyTooLarge:
            await send_json(send, 413, {"error": "request body exceeds the 30 MB limit"})
            return
        except ClientDisconnected:
            return
        if endpoint.workers_max == 0:
            await send_json(send, 400, NO_WORKERS)
            return
        worker = await self.engine.fleet.acquire(endpoint_id, self.engine.no_worker_wait)
        if worker is None or worker.port is None:
            await send_json(send, 400, NO_WORKERS)
            return
        ok = False
        try:
            status = await forward(
                self.client, scope, receive, send,
                url=target_url(worker.port, path, scope),
                headers=request_headers(scope, drop=(b"authorization",)),
                body=body,
                extra=[(b"x-runpod-worker-id", worker.id.encode())],
            )  # fmt: skip
            ok = status < 500
        except Unreachable as exc:
            await send_json(send, 502, {"error": f"worker {worker.id} did not answer: {exc}"})
        finally:
            self.engine.fleet.release(worker, ok)

    # -- queue-based API host: only /health ---------------------------------------------

    async def serverless_api(self, scope: Scope, send: Send, endpoint_id: str, route: str) -> None:
        key = bearer(scope, bare=True)
        if key not in (self.operator_token, self.read_token):
            await send_json(send, 401, {"error": "missing or invalid API key"})
            return
        endpoint = self.engine.endpoints.get(endpoint_id)
        if endpoint is None:
            await send_json(send, 404, {"error": f"endpoint {endpoint_id} not found"})
            return
        if route != "health":
            await send_json(
                send, 501, {"error": f"/{route}: the sandbox emulates no queue-based jobs"}
            )
            return
        if scope["method"] != "GET":
            await send_json(send, 405, {"error": "use GET"})
            return
        workers = self.engine.fleet.of(endpoint_id)
        ready = [w for w in workers if w.status == READY]
        busy = sum(w.inflight for w in workers)
        counts = {
            "idle": sum(1 for w in ready if not w.inflight),
            "initializing": sum(1 for w in workers if w.status == "INITIALIZING"),
            "ready": len(ready),
            "running": sum(1 for w in ready if w.inflight),
            "throttled": sum(1 for w in workers if w.status == THROTTLED),
            "unhealthy": sum(1 for w in workers if w.status == UNHEALTHY),
        }
        jobs = self.engine.fleet.jobs_of(endpoint_id).to_api(busy)
        await send_json(send, 200, {"jobs": jobs, "workers": counts})

    # -- pod proxy ----------------------------------------------------------------------

    async def pod_proxy(
        self, scope: Scope, receive: Receive, send: Send, target: str, path: str
    ) -> None:
        pod_id, _, raw_port = target.rpartition("-")
        pod = self.engine.pods.get(pod_id)
        if pod is None or pod.status == TERMINATED or not raw_port.isdigit():
            await send_text(send, 404, f"404 Not Found: no pod {target}\n")
            return
        try:
            body = await read_body(receive, limit=PROXY_BODY_LIMIT)
        except BodyTooLarge:
            await send_text(send, 413, "413 Request Entity Too Large\n")
            return
        except ClientDisconnected:
            return
        port = int(raw_port)
        exposed = f"{port}/http" in pod.spec.get("ports", [])
        if pod.status != RUNNING or not exposed or port != pod.service_port():
            await send_text(send, 502, _bad_gateway(pod.status, exposed))
            return
        try:
            await forward(
                self.client, scope, receive, send,
                url=target_url(pod.port, path, scope),
                headers=request_headers(scope, drop=()),
                body=body,
                start_timeout=self.engine.proxy_timeout,
            )  # fmt: skip
        except Unreachable:
            await send_text(send, 502, "502 Bad Gateway: nothing listens on that port yet\n")
        except TimeoutError:
            await send_text(send, 524, "524 A timeout occurred: the pod did not answer in time\n")


def _bad_gateway(status: str, exposed: bool) -> str:
    if status != RUNNING:
        return f"502 Bad Gateway: the pod is {status}\n"
    if not exposed:
        return "502 Bad Gateway: that port is not exposed as <port>/http\n"
    return "502 Bad Gateway: nothing listens on that port\n"
