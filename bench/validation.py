"""Time the emulators' request validation against the vendored API documents, per request.

Run: ``python bench/validation.py``. In-process, no HTTP: the figure is what validation adds
to each request the sandbox serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ondemand.sandbox.vendor.openapi import OVHAI, RUNPOD, document

ENDPOINT = {
    "name": "bench", "type": "LOAD_BALANCER", "image": "img:1", "env": {"A": "b"},
    "ports": ["11434/http"], "gpu": {"pools": ["ADA_24"], "count": 1},
    "workers": {"min": 0, "max": 1, "idleTimeout": 60},
    "scaling": {"type": "REQUEST_COUNT", "requestCount": 4},
}  # fmt: skip
APP = {
    "name": "bench", "image": "img:1", "envVars": [{"name": "A", "value": "b"}],
    "resources": {"flavor": "l4-1-gpu", "gpu": 1}, "defaultHttpPort": 8080,
    "unsecureHttp": True, "labels": {"a": "b"}, "probe": {"path": "/ping", "port": 8080},
    "scalingStrategy": {"fixed": {"replicas": 1}},
}  # fmt: skip


def per_call(run: Callable[[], object], rounds: int = 2000) -> float:
    run()
    start = time.perf_counter()
    for _ in range(rounds):
        run()
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    start = time.perf_counter()
    runpod, ovh = document(RUNPOD), document(OVHAI)
    print(f"load both documents: {(time.perf_counter() - start) * 1e3:.0f} ms (once)")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("RunPod POST /v2/serverless", lambda: runpod.check(
            "POST", "/v2/serverless", {}, {}, ENDPOINT, has_body=True)),
        ("RunPod GET /v2/serverless/{id}", lambda: runpod.check(
            "GET", "/v2/serverless/{id}", {"id": "abc"}, {})),
        ("RunPod GET /v2/catalog/gpus?include=", lambda: runpod.check(
            "GET", "/v2/catalog/gpus", {}, {"include": ["AVAILABILITY"]})),
        ("OVH POST /v1/app", lambda: ovh.check("POST", "/v1/app", {}, {}, APP, has_body=True)),
        ("OVH GET /v1/app?labelSelector=", lambda: ovh.check(
            "GET", "/v1/app", {}, {"labelSelector": ["a=b"], "page": ["1"]})),
    ]  # fmt: skip
    for name, run in cases:
        print(f"{name}: {per_call(run):.0f} µs per request")


if __name__ == "__main__":
    main()
