"""The emulated RunPod REST v2 control plane: keys, problem bodies, validation, shapes.

Nothing here starts a worker or a pod: one sandbox serves the whole module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.sandbox.server import SandboxServer, sandbox_server
from tests.sandbox.runpod_client import RunPod, lb_body, pod_body, problem


@pytest.fixture(scope="module")
def runpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunPod]:
    with sandbox_server(tmp_path_factory.mktemp("runpod"), transition_seconds=0.05) as running:
        client = RunPod(running)
        yield client
        client.close()
        assert running.sandbox.runner.processes == {}


def _running(runpod: RunPod) -> SandboxServer:
    return runpod.running


def test_keys_missing_unknown_and_read_only(runpod: RunPod) -> None:
    base = runpod.running.runpod_url
    missing = problem(runpod.plain.get(base + "/v2/serverless"), 401)
    assert missing == {"title": "Unauthorized", "status": 401, "detail": "missing bearer token"}
    wrong = {"Authorization": "Bearer not-a-key"}
    assert problem(runpod.plain.get(base + "/v2/pods", headers=wrong), 401)["detail"]
    reader = runpod.running.read_headers
    listed = runpod.plain.get(base + "/v2/network-volumes", headers=reader)
    assert listed.status_code == 200
    assert listed.json() == {"networkVolumes": []}
    assert '"minute";r=' in listed.headers["ratelimit"]
    assert '"minute";q=' in listed.headers["ratelimit-policy"]
    refused = runpod.plain.post(base + "/v2/serverless", headers=reader, json=lb_body())
    assert problem(refused, 403)["title"] == "Forbidden"
    assert runpod.http.get("/v2/serverless").json() == {"endpoints": []}


def test_routes_that_do_not_exist(runpod: RunPod) -> None:
    assert problem(runpod.http.get("/v2/networkvolumes"), 404)
    assert problem(runpod.http.post("/v1/endpoints", json={}), 404)
    not_allowed = runpod.http.put("/v2/serverless", json={})
    assert problem(not_allowed, 405)
    assert not_allowed.headers["allow"] == "GET, POST"
    assert problem(runpod.http.get("/v2/serverless/nope"), 404)["detail"] == (
        "endpoint nope not found"
    )


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"bogus": 1}, "'bogus'"),
        ({"workersMin": 0}, "'workersMin'"),
        ({"gpu": {"pools": ["ADA_24"], "gpuTypeIds": ["NVIDIA L4"]}}, "'gpuTypeIds'"),
        ({"workers": {"min": 0, "max": 1, "idle": 5}}, "'idle'"),
    ],
)
def test_unknown_fields_are_422_naming_them(
    runpod: RunPod, change: dict[str, Any], where: str
) -> None:
    body = problem(runpod.http.post("/v2/serverless", json=lb_body(**change)), 422)
    assert where in body["detail"]
    assert body["errors"] == [body["detail"].removeprefix("request validation failed: ")]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"type": "LB"}, 422, "'QUEUE', 'LOAD_BALANCER'"),
        ({"type": None}, 422, "$.type"),
        ({"scaling": {"type": "QUEUE_DELAY", "queueDelay": 4}}, 422, "REQUEST_COUNT"),
        ({"scaling": {"type": "REQUEST_COUNT"}}, 422, "'requestCount'"),
        ({"workers": {"min": -1}}, 422, "$.workers.min: must be >= 0"),
        ({"workers": {"min": 2, "max": 1}}, 400, "must not exceed"),
        ({"gpu": {"pools": []}}, 422, "at least 1"),
        ({"gpu": {"pools": ["ADA_99"]}}, 400, "valid pools: AMPERE_16, "),
        ({"gpu": {"pools": ["NVIDIA GeForce RTX 4090"]}}, 400, "not GPU type ids"),
        ({"gpu": {"pools": ["ADA_24"], "excludedTypes": ["RTX 4090"]}}, 400, "valid GPU types"),
        ({"dataCenterIds": ["US-XX-1"]}, 400, "valid data centers: EU-RO-1, "),
        ({"ports": ["11434"]}, 400, "11434/http"),
        ({"templateId": "tpl123"}, 400, "no templates"),
        ({"flashboot": True}, 422, "$.flashboot"),
        ({"networkVolumes": ["missing000"]}, 400, "network volume missing000 not found"),
    ],
)
def test_endpoint_validation(
    runpod: RunPod, body: dict[str, Any], status: int, expected: str
) -> None:
    answer = runpod.http.post("/v2/serverless", json=lb_body(**body))
    assert expected in problem(answer, status)["detail"]


def test_required_fields(runpod: RunPod) -> None:
    for name in ("name", "type", "scaling", "image"):
        body = lb_body()
        del body[name]
        assert f"'{name}'" in problem(runpod.http.post("/v2/serverless", json=body), 422)["detail"]
    # The document does not require gpu (a CPU endpoint sends cpu): its absence is a rule.
    no_gpu = {k: v for k, v in lb_body().items() if k != "gpu"}
    assert (
        "GPU endpoints only"
        in problem(runpod.http.post("/v2/serverless", json=no_gpu), 400)["detail"]
    )
    assert problem(runpod.http.post("/v2/serverless", content=b"{"), 400)


def test_endpoint_crud_shapes(runpod: RunPod) -> None:
    created = runpod.create_endpoint(workers={"max": 0})
    endpoint_id = created["id"]
    assert re.fullmatch(r"[a-z0-9]{14}", endpoint_id)
    lb = f"{runpod.running.url}/runpod/lb/{endpoint_id}"
    assert created["requestUrls"] == {"base": lb, "health": lb + "/ping"}
    assert created["workers"] == {"min": 0, "max": 0, "idleTimeout": 10}
    assert created["scaling"] == {"type": "REQUEST_COUNT", "requestCount": 1}
    assert (created["flashboot"], created["timeout"]) == ("OFF", 300000)
    assert (created["networkVolumes"], created["dataCenterIds"]) == ([], [])
    assert created["gpu"] == {"pools": ["ADA_24"], "count": 1}
    assert created["createdAt"].endswith("Z")
    assert runpod.http.get(f"/v2/serverless/{endpoint_id}").json() == created
    assert runpod.http.get("/v2/serverless").json() == {"endpoints": [created]}

    patched = runpod.http.patch(
        f"/v2/serverless/{endpoint_id}", json={"workers": {"max": 2}, "name": "renamed"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["workers"] == {"min": 0, "max": 2, "idleTimeout": 10}
    assert patched.json()["name"] == "renamed"
    assert patched.json()["env"] == created["env"]
    zero = runpod.http.patch(
        f"/v2/serverless/{endpoint_id}", json={"workers": {"min": 0, "max": 0}}
    )
    assert zero.json()["workers"]["max"] == 0
    assert (
        "'type'"
        in problem(runpod.http.patch(f"/v2/serverless/{endpoint_id}", json={"type": "QUEUE"}), 422)[
            "detail"
        ]
    )
    delay = {"scaling": {"type": "QUEUE_DELAY", "queueDelay": 2}}
    assert problem(runpod.http.patch(f"/v2/serverless/{endpoint_id}", json=delay), 400)
    workers = runpod.workers(endpoint_id)
    assert workers["workers"] == []
    assert workers["summary"] == {
        "running": 0, "idle": 0, "initializing": 0, "throttled": 0, "unhealthy": 0, "total": 0,
    }  # fmt: skip
    assert runpod.health(endpoint_id) == {
        "jobs": {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0},
        "workers": {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0,
                    "unhealthy": 0},
    }  # fmt: skip
    deleted = runpod.http.delete(f"/v2/serverless/{endpoint_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert problem(runpod.http.get(f"/v2/serverless/{endpoint_id}"), 404)


def test_queue_endpoints_have_queue_urls_and_refuse_the_load_balancer(runpod: RunPod) -> None:
    created = runpod.create_endpoint(
        type="QUEUE", scaling={"type": "QUEUE_DELAY", "queueDelay": 4}, workers={"max": 0}
    )
    api = f"{runpod.running.env['RUNPOD_ENDPOINT_BASE_URL']}/{created['id']}"
    assert created["requestUrls"]["runSync"] == api + "/runsync"
    assert created["requestUrls"]["purgeQueue"] == api + "/purge-queue"
    assert created["requestUrls"]["health"] == api + "/health"
    lb = f"{runpod.running.runpod_url}/lb/{created['id']}/api/tags"
    refused = runpod.plain.get(lb, headers=runpod.running.headers)
    assert (refused.status_code, refused.json()) == (400, {"error": "not allowed for QB API"})
    assert runpod.http.delete(f"/v2/serverless/{created['id']}").status_code == 204


def test_network_volumes(runpod: RunPod) -> None:
    bad = runpod.http.post(
        "/v2/network-volumes", json={"name": "v", "size": 50, "dataCenter": "US-TX-1"}
    )
    detail = problem(bad, 400)["detail"]
    assert "US-TX-1" in detail
    assert "does not support network volumes" in detail
    assert "EU-RO-1" in detail
    assert "US-KS-2" in detail
    old_field = {"name": "v", "size": 50, "dataCenterId": "EU-RO-1"}
    assert (
        "'dataCenterId'"
        in problem(runpod.http.post("/v2/network-volumes", json=old_field), 422)["detail"]
    )
    small = {"name": "v", "size": 5, "dataCenter": "EU-RO-1"}
    assert (
        "$.size: must be >= 10"
        in problem(runpod.http.post("/v2/network-volumes", json=small), 422)["detail"]
    )
    no_hp = {"name": "v", "size": 50, "dataCenter": "EU-RO-1", "type": "HIGH_PERFORMANCE"}
    assert problem(runpod.http.post("/v2/network-volumes", json=no_hp), 400)

    created = runpod.http.post(
        "/v2/network-volumes", json={"name": "models", "size": 50, "dataCenter": "US-KS-2"}
    )
    assert created.status_code == 201, created.text
    volume = created.json()
    assert re.fullmatch(r"[a-z0-9]{10}", volume["id"])
    assert volume == {
        "id": volume["id"],
        "name": "models",
        "size": 50,
        "dataCenter": "US-KS-2",
        "type": "STANDARD",
    }
    url = f"/v2/network-volumes/{volume['id']}"
    assert runpod.http.get("/v2/network-volumes").json() == {"networkVolumes": [volume]}
    assert problem(runpod.http.patch(url, json={"size": 20}), 400)
    assert problem(runpod.http.patch(url, json={}), 422)
    assert runpod.http.patch(url, json={"size": 100}).json()["size"] == 100

    elsewhere = lb_body(
        networkVolumes=[volume["id"]], dataCenterIds=["EU-RO-1"], workers={"max": 0}
    )
    assert "US-KS-2" in problem(runpod.http.post("/v2/serverless", json=elsewhere), 400)["detail"]
    endpoint = runpod.create_endpoint(networkVolumes=[volume["id"]], workers={"max": 0})
    assert endpoint["networkVolumes"] == [volume["id"]]
    assert "attached to endpoint" in problem(runpod.http.delete(url), 400)["detail"]
    assert runpod.http.delete(f"/v2/serverless/{endpoint['id']}").status_code == 204
    assert runpod.http.delete(url).status_code == 204
    assert problem(runpod.http.get(url), 404)


def test_catalog(runpod: RunPod) -> None:
    gpus = runpod.http.get("/v2/catalog/gpus").json()["gpus"]
    by_id = {gpu["id"]: gpu for gpu in gpus}
    assert by_id["NVIDIA GeForce RTX 4090"]["pool"] == "ADA_24"
    assert by_id["NVIDIA L4"]["memory"] == 24
    pools = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80"}
    assert {g["pool"] for g in gpus} >= {*pools, "ADA_80_PRO", "HOPPER_141"}
    assert "availability" not in by_id["NVIDIA L4"]
    one = runpod.http.get("/v2/catalog/gpus/NVIDIA L40S", params={"include": "AVAILABILITY"})
    assert one.json()["pool"] == "ADA_48_PRO"
    assert one.json()["availability"] == "HIGH"
    centers = runpod.http.get("/v2/catalog/datacenters").json()["dataCenters"]
    assert len(centers) == 33  # the 26 of the v1 enum and 7 newer ones with volumes
    with_volumes = runpod.http.get(
        "/v2/catalog/datacenters", params={"networkVolumeTypes": "STANDARD"}
    ).json()["dataCenters"]
    assert 0 < len(with_volumes) < len(centers)
    assert all(dc["networkVolumeTypes"] for dc in with_volumes)
    assert problem(runpod.http.get("/v2/catalog/datacenters/XX-1"), 404)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (pod_body(gpu={"id": "ADA_24"}), 400, "looks like a serverless pool id"),
        (pod_body(gpu={"id": "RTX 4090"}), 400, "valid GPU types: NVIDIA RTX A4000, "),
        (pod_body(gpu=None), 422, "$.gpu"),
        ({k: v for k, v in pod_body().items() if k != "gpu"}, 400, "exactly one of gpu or cpu"),
        (pod_body(cloudType="SECURE"), 422, "'cloudType'"),
        (
            pod_body(
                mounts={
                    "persistent": {"size": 20, "path": "/workspace"},
                    "network": [{"volumeId": "x", "path": "/v"}],
                }
            ),
            400,
            "mutually exclusive",
        ),
        (pod_body(mounts={"network": [{"volumeId": "x"}]}), 422, "'path'"),
        (pod_body(gpu={"id": "NVIDIA L4", "count": 9}), 400, "at most"),
    ],
)
def test_pod_validation(runpod: RunPod, body: dict[str, Any], status: int, expected: str) -> None:
    assert expected in problem(runpod.http.post("/v2/pods", json=body), status)["detail"]
    assert runpod.http.get("/v2/pods").json() == {"pods": []}


def test_http_faults_answer_problems(runpod: RunPod) -> None:
    runpod.faults({"http": [{"route": "POST /v2/serverless", "status": 429, "retry_after": 7},
                            {"route": "GET /v2/pods*", "status": 503}]})  # fmt: skip
    limited = runpod.http.post("/v2/serverless", json=lb_body())
    assert problem(limited, 429)["detail"] == "rate limit exceeded for the minute window"
    assert limited.headers["retry-after"] == "7"
    assert problem(runpod.http.get("/v2/pods"), 503)
    assert runpod.http.get("/v2/pods").status_code == 200
    answer = runpod.plain.post(
        runpod.running.url + "/_sandbox/faults", json={"runpod": {"outage": 1}}
    )
    assert answer.status_code == 400
    assert (
        "known: crash, created_then_500, flashboot_rename, http, insufficient_balance, "
        "no_capacity, pool_forbidden, slow, throttled, zero_gpus" in answer.json()["message"]
    )
    cleared = httpx.delete(runpod.running.url + "/_sandbox/faults", trust_env=False).json()
    assert cleared["runpod"] == {"http": [], "slow": {"multiplier": 1.0, "seconds": {}},
                                 "created_then_500": 0, "throttled": 0, "crash": 0,
                                 "zero_gpus": 0, "no_capacity": 0, "insufficient_balance": 0,
                                 "pool_forbidden": 0, "flashboot_rename": 0}  # fmt: skip


def test_a_create_answered_500_still_creates_the_endpoint(runpod: RunPod) -> None:
    runpod.faults({"created_then_500": 1})
    answer = runpod.http.post("/v2/serverless", json=lb_body(name="half", workers={"max": 0}))
    assert problem(answer, 500)
    (listed,) = runpod.http.get("/v2/serverless").json()["endpoints"]
    assert listed["name"] == "half"
    assert runpod.http.delete(f"/v2/serverless/{listed['id']}").status_code == 204


def test_state_is_kept_in_json_files(runpod: RunPod) -> None:
    state = Path(runpod.running.sandbox.state_dir) / "runpod"
    assert {p.name for p in state.glob("*.json")} == {"endpoints.json", "pods.json", "volumes.json"}
