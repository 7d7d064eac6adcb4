"""The emulators refuse what the vendors' published API documents refuse, as the vendors do
(RunPod: a 422 problem listing each failure; OVH: a 400 {"message"}), and the vendored
documents are the files their SOURCE notes describe."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from ondemand.sandbox.server import sandbox_server
from ondemand.sandbox.vendor.openapi import OVHAI, RUNPOD
from tests.cloud import Ovh
from tests.sandbox.runpod_client import RunPod, lb_body, pod_body, problem


@pytest.fixture(scope="module")
def runpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunPod]:
    with sandbox_server(tmp_path_factory.mktemp("runpod"), transition_seconds=0.05) as running:
        client = RunPod(running)
        yield client
        client.close()


@pytest.mark.parametrize("filename", [RUNPOD, OVHAI])
def test_the_vendored_documents_are_the_ones_their_notes_describe(filename: str) -> None:
    folder = resources.files("ondemand.sandbox.vendor")
    note = folder.joinpath(filename.replace(".openapi.json", ".SOURCE.md")).read_text()
    digest = hashlib.sha256(folder.joinpath(filename).read_bytes()).hexdigest()
    assert f"SHA-256{'' if 'runpod' in filename else ' of the derived file'}: {digest}" in note
    assert re.search(r"Commit: [0-9a-f]{40}", note)


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        ({"bogus": 1}, "$: additional properties 'bogus' not allowed"),
        ({"workers": {"idleTimeout": 0}}, "$.workers.idleTimeout: must be >= 1, got 0"),
        ({"timeout": "300"}, "$.timeout: expected an integer, got a string"),
        ({"gpu": {"pools": ["ADA_24"], "minCudaVersion": "12"}}, "does not match pattern"),
        ({"scaling": {"type": "REQUEST_COUNT"}}, "$.scaling: missing properties 'requestCount'"),
    ],
)
def test_runpod_answers_what_its_document_refuses_with_a_422_problem(
    runpod: RunPod, change: dict[str, Any], failure: str
) -> None:
    body = problem(runpod.http.post("/v2/serverless", json=lb_body(**change)), 422)
    assert body["title"] == "Unprocessable Entity"
    assert any(failure in error for error in body["errors"]), body
    assert body["detail"] == "request validation failed: " + "; ".join(body["errors"])


def test_runpod_checks_query_and_every_body_route(runpod: RunPod) -> None:
    listed = runpod.http.get("/v2/catalog/datacenters", params={"globalNetwork": "yes"})
    assert problem(listed, 422)["errors"] == [
        "query.globalNetwork: expected a boolean, got a string"
    ]
    include = runpod.http.get("/v2/catalog/gpus", params={"include": "PRICES"})
    assert (
        "query.include[0]: value must be one of 'AVAILABILITY'" in problem(include, 422)["detail"]
    )
    pod = runpod.http.post("/v2/pods", json=pod_body(gpu={"id": "NVIDIA L4", "count": 0}))
    assert problem(pod, 422)["errors"] == ["$.gpu.count: must be >= 1, got 0"]
    volume = runpod.http.post("/v2/network-volumes", json={"name": "v", "size": 10})
    assert problem(volume, 422)["errors"] == ["$: missing properties 'dataCenter'"]
    assert runpod.http.get("/v2/pods").json() == {"pods": []}


@pytest.mark.parametrize(
    ("body", "failure"),
    [
        ({"image": "x", "envVars": [{"name": "A"}]}, "$.envVars[0]: missing properties 'value'"),
        ({"image": "x", "probe": {"port": "8080"}},
         "$.probe.port: expected an integer, got a string"),
        ({"image": "x", "scalingStrategy": {"automatic": {"replicasMin": 1, "replicasMax": 2,
          "resourceType": "GPU", "averageUsageTarget": 50}}},
         "$.scalingStrategy.automatic.resourceType: value must be one of 'CPU', 'RAM', got 'GPU'"),
    ],
)  # fmt: skip
def test_ovh_answers_what_its_document_refuses_with_a_400_message(
    idle_ovh: tuple[Any, Ovh], body: dict[str, Any], failure: str
) -> None:
    _, client = idle_ovh
    answer = client.http.post("/v1/app", json=body)
    assert answer.status_code == 400
    assert answer.json() == {"message": f"request validation failed: {failure}"}
    assert "page" in client.http.get("/v1/app", params={"page": "x"}).json()["message"]


def test_where_the_document_and_the_old_rules_disagreed_the_document_wins(runpod: RunPod) -> None:
    outside = lb_body(gpu={"pools": ["ADA_24"], "excludedTypes": ["NVIDIA L4"]})
    assert (
        "not in gpu.pools"
        in problem(runpod.http.post("/v2/serverless", json=outside), 400)["detail"]
    )
    created = runpod.create_endpoint(
        gpu={"pools": ["ADA_24", "AMPERE_24"], "excludedTypes": ["NVIDIA GeForce RTX 4090"]},
        workers={"max": 0},
    )
    url = f"/v2/serverless/{created['id']}"
    # UpdateEndpointGpuConfig: pools optional; omitted, the selection and exclusions stay.
    patched = runpod.http.patch(url, json={"gpu": {"count": 2}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["gpu"]["pools"] == ["ADA_24", "AMPERE_24"]
    assert patched.json()["gpu"]["excludedTypes"] == ["NVIDIA GeForce RTX 4090"]
    assert patched.json()["gpu"]["count"] == 2
    alone = runpod.http.patch(url, json={"gpu": {"excludedTypes": ["NVIDIA L4"]}})
    assert "missing properties 'pools'" in problem(alone, 422)["detail"]
    assert runpod.http.delete(url).status_code == 204
