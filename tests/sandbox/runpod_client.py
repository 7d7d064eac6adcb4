"""A test client of the emulated RunPod (REST v2, its load balancer, health and pod proxy),
with the waits the tests need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from ondemand.sandbox.server import SandboxServer
from tests.cloud import APP_KEY, wait

# What a load-balancing worker needs to be found by the health probe: both ports set
# explicitly, and the port exposed.
LB_ENV = {"PORT": "11434", "PORT_HEALTH": "11434", "AUTHORIZATION_APIKEY": APP_KEY}
PROBLEM = "application/problem+json"


def lb_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "ollama-lb",
        "type": "LOAD_BALANCER",
        "image": "ollama-ondemand:test",
        "gpu": {"pools": ["ADA_24"], "count": 1},
        "ports": ["11434/http"],
        "env": dict(LB_ENV),
        "workers": {"min": 0, "max": 1, "idleTimeout": 30},
        "scaling": {"type": "REQUEST_COUNT", "requestCount": 1},
    }
    body.update(fields)
    return body


def pod_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "ollama-pod",
        "image": "ollama-ondemand:test",
        "gpu": {"id": "NVIDIA L4", "count": 1},
        "ports": ["11434/http", "22/tcp"],
        "env": {"PORT": "11434", "AUTHORIZATION_APIKEY": APP_KEY},
    }
    body.update(fields)
    return body


class RunPod:
    def __init__(self, running: SandboxServer) -> None:
        self.running = running
        self.key = running.sandbox.operator_token
        self.http = httpx.Client(
            base_url=running.runpod_url, headers=running.headers, timeout=30, trust_env=False
        )
        self.plain = httpx.Client(timeout=30, trust_env=False)

    def close(self) -> None:
        self.http.close()
        self.plain.close()

    # -- serverless ---------------------------------------------------------------------

    def create_endpoint(self, **fields: Any) -> dict[str, Any]:
        answer = self.http.post("/v2/serverless", json=lb_body(**fields))
        assert answer.status_code == 201, answer.text
        endpoint: dict[str, Any] = answer.json()
        return endpoint

    def gateway(
        self, endpoint: dict[str, Any], path: str, method: str = "GET", **options: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", "X-API-Key": APP_KEY}
        headers.update(options.pop("headers", {}))
        url = endpoint["requestUrls"]["base"] + path
        return self.plain.request(method, url, headers=headers, **options)

    def workers(self, endpoint_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v2/serverless/{endpoint_id}/workers")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def health(self, endpoint_id: str) -> dict[str, Any]:
        url = self.running.env["RUNPOD_ENDPOINT_BASE_URL"] + f"/{endpoint_id}/health"
        answer = self.plain.get(url, headers=self.running.headers)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def wait_workers(
        self, endpoint_id: str, check: Callable[[dict[str, int]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        return wait(lambda: self.workers(endpoint_id), lambda w: check(w["summary"]), timeout)

    # -- pods ---------------------------------------------------------------------------

    def create_pod(self, **fields: Any) -> dict[str, Any]:
        answer = self.http.post("/v2/pods", json=pod_body(**fields))
        assert answer.status_code == 201, answer.text
        pod: dict[str, Any] = answer.json()
        return pod

    def pod(self, pod_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v2/pods/{pod_id}")
        assert answer.status_code == 200, answer.text
        pod: dict[str, Any] = answer.json()
        return pod

    def wait_pod(self, pod_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        return wait(lambda: self.pod(pod_id), lambda p: p["status"] in statuses, timeout)

    def action(self, pod_id: str, action: str) -> httpx.Response:
        return self.http.post(f"/v2/pods/{pod_id}/action", json={"action": action})

    def proxy_url(self, pod_id: str, port: int) -> str:
        template = self.running.env["RUNPOD_POD_PROXY_URL"]
        return template.format(pod_id=pod_id, port=port)

    # -- the sandbox ----------------------------------------------------------------------

    def apps(self, kind: str) -> list[dict[str, Any]]:
        listed = self.plain.get(self.running.url + "/_sandbox/apps").json()["apps"]
        return [a for a in listed if a["api"] == "runpod" and a["kind"] == kind]

    def faults(self, document: dict[str, Any]) -> None:
        answer = self.plain.post(self.running.url + "/_sandbox/faults", json={"runpod": document})
        assert answer.status_code == 200, answer.text


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The problem+json body of an error answer, checked against the spec's shape."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM), answer.headers
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body
