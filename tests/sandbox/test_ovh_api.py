"""The emulated AI API's contract: auth, validation, lists, labels, scaling, capabilities.

Apps here stay QUEUED (a slow-transition fault), so no server process is started.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ondemand.sandbox.server import SandboxServer
from tests.cloud import Ovh, StartSandbox

PARKED = {"ovh": {"slow": {"seconds": {"QUEUED": 120}}}}


@pytest.fixture
def parked(start_sandbox: StartSandbox) -> tuple[SandboxServer, Ovh]:
    return start_sandbox(faults=PARKED)


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message"}, body
    message: str = body["message"]
    return message


def test_tokens_operator_manages_read_only_reads(parked: tuple[SandboxServer, Ovh]) -> None:
    running, client = parked
    app = client.create()
    base = running.ovh_url
    plain = httpx.Client(base_url=base, trust_env=False)
    assert "Bearer" in _error(plain.get("/v1/app"), 401)
    assert _error(plain.get("/v1/app", headers={"Authorization": "Bearer nope"}), 401)
    basic = {"Authorization": "Basic c2FuZGJveC1vcGVyYXRvcg=="}
    assert _error(plain.get("/v1/app", headers=basic), 401)
    reader = httpx.Client(base_url=base, headers=running.read_headers, trust_env=False)
    assert reader.get(f"/v1/app/{app['id']}").status_code == 200
    assert reader.get("/v1/app").json()["metadata"]["total"] == 1
    assert "read role" in _error(reader.post("/v1/app", json={"image": "x"}), 403)
    assert _error(reader.put(f"/v1/app/{app['id']}/stop"), 403)
    assert _error(reader.delete(f"/v1/app/{app['id']}", params={"force": "true"}), 403)
    assert reader.get("/v1/me").json()["role"] == "read"
    me = client.http.get("/v1/me").json()
    assert me == {
        "name": "sandbox-user",
        "tenant": "sandbox",
        "tokenKind": "app",
        "role": "operator",
    }
    assert client.state(app["id"]) == "QUEUED"
    plain.close()
    reader.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "$: missing properties 'image'"),
        ({"image": 3}, "$.image: expected a string, got a number"),
        ({"image": "x", "imagee": "y"}, "unknown field(s) in AppSpec: imagee"),
        ({"image": "x", "region": "GRA"}, "region"),
        ({"image": "x", "defaultHttpPort": "8080"}, "$.defaultHttpPort: expected an integer"),
        ({"image": "x", "defaultHttpPort": 70000}, "defaultHttpPort must be between 1 and 65535"),
        ({"image": "x", "unsecureHttp": "yes"}, "$.unsecureHttp: expected a boolean"),
        ({"image": "x", "resources": {"flavor": "b300-1-gpu"}}, "unknown flavor 'b300-1-gpu'"),
        ({"image": "x", "resources": {"gpu": 5}}, "resources.gpu must be between 0 and 4"),
        ({"image": "x", "resources": {"gpu": True}}, "$.resources.gpu: expected an integer"),
        ({"image": "x", "resources": {"flavor": "ai1-1-cpu", "gpu": 1}}, "has no GPU"),
        ({"image": "x", "resources": {"flavor": "l4-1-gpu", "gpu": 0}}, "GPU flavor"),
        ({"image": "x", "resources": {"flavor": "l4-1-gpu", "gpuModel": "H100"}}, "gpuModel"),
        ({"image": "x", "envVars": {"A": "b"}}, "$.envVars: expected an array"),
        ({"image": "x", "envVars": [{"name": "A", "value": 1}]}, "$.envVars[0].value: expected"),
        ({"image": "x", "envVars": [{"name": "1A B", "value": "x"}]}, "not a valid variable"),
        ({"image": "x", "labels": {"team": "a b"}}, "not a valid label value"),
        ({"image": "x", "labels": {"bad key": "a"}}, "not a valid label name"),
        ({"image": "x", "command": "serve"}, "$.command: expected an array"),
        ({"image": "x", "probe": {"path": "ping"}}, "probe.path must start with '/'"),
        (
            {"image": "x", "scalingStrategy": {
                "fixed": {"replicas": 1},
                "automatic": {"replicasMin": 1, "replicasMax": 2, "resourceType": "CPU",
                              "averageUsageTarget": 75}}},
            "exactly one of 'fixed' or 'automatic' (both were given)",
        ),
        ({"image": "x", "scalingStrategy": {"fixed": {"replicas": 11}}}, "between 1 and 10"),
        ({"image": "x", "volumes": [{"mountPath": "data", "permission": "RO",
                                     "dataStore": {"alias": "GRA", "container": "c"}}]},
         "mountPath must be an absolute path"),
        ({"image": "x", "volumes": [{"mountPath": "/d", "permission": "rw",
                                     "dataStore": {"alias": "GRA", "container": "c"}}]},
         "permission must be RO, RW or RWD"),
        ({"image": "x", "volumes": [{"mountPath": "/d", "permission": "RO"}]},
         "exactly one source"),
        ({"image": "x", "volumes": [{"mountPath": "/d", "permission": "RO",
                                     "dataStore": {"alias": "GRA", "container": "c"},
                                     "publicGit": {"url": "https://x"}}]},
         "got dataStore, publicGit"),
        ({"image": "x", "volumes": [{"mountPath": "/d", "permission": "RO",
                                     "dataStore": {"alias": "GRA"}}]},
         "$.volumes[0].dataStore: missing properties 'container'"),
    ],
)  # fmt: skip
def test_create_refuses_what_a_strict_server_refuses(
    idle_ovh: tuple[SandboxServer, Ovh], body: dict[str, Any], expected: str
) -> None:
    _, client = idle_ovh
    assert expected in _error(client.http.post("/v1/app", json=body), 400)
    assert client.http.get("/v1/app").json()["metadata"]["total"] == 0


def test_create_refuses_a_body_that_is_not_json(idle_ovh: tuple[SandboxServer, Ovh]) -> None:
    _, client = idle_ovh
    assert "not valid JSON" in _error(client.http.post("/v1/app", content=b"{image"), 400)
    assert "$: expected an object" in _error(client.http.post("/v1/app", json=["x"]), 400)


def test_create_echoes_the_spec_with_the_platform_defaults(
    parked: tuple[SandboxServer, Ovh],
) -> None:
    _, client = parked
    store = {"alias": "GRA", "container": "ollama-models", "prefix": "m/"}
    volume = {
        "mountPath": "/workspace/models",
        "permission": "RW",
        "cache": True,
        "dataStore": store,
    }
    app = client.create(
        labels={"ovh/id": "mine", "ondemand/name": "ci"},
        resources={"flavor": "l4-1-gpu", "gpu": 2},
        volumes=[volume],
        probe={"path": "/ping", "port": 8080},
        command=["serve"],
    )
    spec = app["spec"]
    assert spec["labels"] == {"ondemand/name": "ci", "ovh/id": app["id"], "ovh/type": "app"}
    assert spec["name"]  # generated, e.g. "funny-ubuntu"
    assert spec["defaultHttpPort"] == 8080
    assert spec["unsecureHttp"] is False
    assert spec["resources"]["flavor"] == "l4-1-gpu"
    assert spec["resources"]["gpu"] == 2
    assert spec["resources"]["gpuModel"] == "L4"
    assert spec["resources"]["cpu"] == 44
    assert spec["scalingStrategy"] == {"fixed": {"replicas": 1}}
    assert spec["deploymentStrategy"]["progressDeadlineSeconds"] == 600
    assert spec["volumes"] == [volume]
    assert spec["probe"] == {"path": "/ping", "port": 8080}
    assert spec["command"] == ["serve"]
    assert app["status"]["volumes"][0]["mountPath"] == "/workspace/models"
    assert app["user"] == "sandbox-user"
    default = client.create()["spec"]["resources"]
    assert (default["flavor"], default["gpu"], default["gpuModel"]) == (
        "ai1-1-gpu",
        1,
        "Tesla-V100S",
    )
    cpu = client.create(resources={"cpu": 4})["spec"]["resources"]
    assert (cpu["flavor"], cpu["cpu"], cpu["gpu"]) == ("ai1-1-cpu", 4, 0)


def test_list_filters_sorts_and_pages(parked: tuple[SandboxServer, Ovh]) -> None:
    _, client = parked
    ids = [client.create(name=f"app-{i}", labels={"group": "a" if i < 3 else "b"})["id"]
           for i in range(4)]  # fmt: skip
    assert client.http.put(f"/v1/app/{ids[0]}/stop").status_code == 204
    client.wait(ids[0], "STOPPED")

    everything = client.http.get("/v1/app").json()
    assert [a["id"] for a in everything["items"]] == ids
    assert everything["metadata"] == {"currentPage": 1, "pageCount": 1, "total": 4, "links": {}}
    group_a = client.http.get("/v1/app", params={"labelSelector": "group=a"}).json()
    assert [a["id"] for a in group_a["items"]] == ids[:3]
    one = client.http.get("/v1/app", params={"labelSelector": f"group=a,ovh/id={ids[1]}"}).json()
    assert [a["id"] for a in one["items"]] == [ids[1]]
    not_a = client.http.get("/v1/app", params={"labelSelector": "group!=a"}).json()
    assert [a["id"] for a in not_a["items"]] == [ids[3]]
    stopped = client.http.get("/v1/app", params={"statusState": "STOPPED"}).json()
    assert [a["id"] for a in stopped["items"]] == [ids[0]]
    both = client.http.get(
        "/v1/app", params=[("statusState", "STOPPED"), ("statusState", "QUEUED")]
    )
    assert both.json()["metadata"]["total"] == 4
    newest = client.http.get("/v1/app", params={"order": "desc", "sort": "createdAt"}).json()
    assert [a["id"] for a in newest["items"]] == ids[::-1]

    first = client.http.get("/v1/app", params={"size": 3, "labelSelector": "group=a"}).json()
    assert first["metadata"]["total"] == 3
    assert first["metadata"]["pageCount"] == 1
    page1 = client.http.get("/v1/app", params={"size": 3}).json()
    assert page1["metadata"] == {
        "currentPage": 1, "pageCount": 2, "total": 4,
        "links": {"next": "/ovh/v1/app?size=3&page=2"},
    }  # fmt: skip
    page2 = client.http.get(client.running.url + page1["metadata"]["links"]["next"]).json()
    assert [a["id"] for a in page2["items"]] == ids[3:]
    assert page2["metadata"]["links"] == {}

    assert "statusState" in _error(client.http.get("/v1/app?statusState=UP"), 400)
    assert "page" in _error(client.http.get("/v1/app?page=0"), 400)
    assert "size" in _error(client.http.get("/v1/app?size=x"), 400)
    assert "labelSelector" in _error(client.http.get("/v1/app?labelSelector=oops"), 400)
    assert "order" in _error(client.http.get("/v1/app?order=up"), 400)


def test_illegal_transitions_are_400(parked: tuple[SandboxServer, Ovh]) -> None:
    _, client = parked
    app_id = client.create()["id"]
    assert "only a STOPPED or FAILED" in _error(client.http.put(f"/v1/app/{app_id}/start"), 400)
    assert "stop it before" in _error(client.http.delete(f"/v1/app/{app_id}"), 400)
    forced = client.http.delete(f"/v1/app/{app_id}?force=yes")
    assert "query.force: expected a boolean" in _error(forced, 400)
    assert client.http.put(f"/v1/app/{app_id}/stop").status_code == 204
    assert client.state(app_id) == "STOPPING"
    assert "only a running app" in _error(client.http.put(f"/v1/app/{app_id}/stop"), 400)
    app = client.wait(app_id, "STOPPED")
    assert [h["state"] for h in app["status"]["history"]] == ["QUEUED", "STOPPING", "STOPPED"]
    assert app["status"]["info"] == {"code": "APP_STOPPED", "message": "App is stopped"}
    assert client.http.delete(f"/v1/app/{app_id}").status_code == 204
    assert "already being deleted" in _error(client.http.delete(f"/v1/app/{app_id}"), 400)
    client.wait_gone(app_id)
    for method, path in [("GET", ""), ("PUT", "/start"), ("PUT", "/stop"), ("DELETE", "")]:
        assert "not found" in _error(client.http.request(method, f"/v1/app/{app_id}{path}"), 404)
    assert _error(client.http.get("/v1/nothing"), 404)
    assert _error(client.http.post(f"/v1/app/{app_id}/start"), 405)


def test_update_labels_scaling_and_image(parked: tuple[SandboxServer, Ovh]) -> None:
    _, client = parked
    app = client.create(envVars=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    path = f"/v1/app/{app['id']}"
    patch = {"url": "img:2", "envVars": [{"name": "A"}, {"name": "B", "value": "3"},
             {"name": "C", "value": "4"}], "defaultHttpPort": 9000, "flavor": "h100-1-gpu",
             "command": ["x"]}  # fmt: skip
    updated = client.http.put(path, json=patch)
    assert updated.status_code == 200, updated.text
    spec = updated.json()["spec"]
    assert spec["image"] == "img:2"
    assert spec["defaultHttpPort"] == 9000
    assert spec["envVars"] == [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]
    assert (spec["resources"]["flavor"], spec["resources"]["gpuModel"]) == ("h100-1-gpu", "H100")
    assert spec["command"] == ["x"]
    # No published UpdateInput has the probe: refused with the API's error body.
    refused = client.http.put(path, json={"probe": {"path": "/ping"}})
    assert "probe cannot be changed" in _error(refused, 400)
    assert client.http.put(path, json={"command": []}).json()["spec"].get("command") is None
    assert client.http.put(path, json={"gpu": 2}).json()["spec"]["resources"]["gpu"] == 2
    assert "unknown flavor" in _error(client.http.put(path, json={"flavor": "x"}), 400)
    assert "appUpdate" in _error(client.http.put(path, json={"appUpdate": {"url": "y"}}), 400)
    assert client.get(app["id"])["spec"]["image"] == "img:2"

    assert client.http.put(path + "/label", json={"name": "team", "value": "ml"}).status_code == 204
    assert client.get(app["id"])["spec"]["labels"]["team"] == "ml"
    assert client.http.put(path + "/label", json={"name": "team"}).status_code == 204
    assert "team" not in client.get(app["id"])["spec"]["labels"]
    assert "ovh/" in _error(
        client.http.put(path + "/label", json={"name": "ovh/id", "value": "x"}), 400
    )
    assert _error(client.http.put(path + "/label", json={"name": "a b", "value": "x"}), 400)

    scaling = path + "/scalingstrategy"
    auto = {"automatic": {"replicasMin": 0, "replicasMax": 2, "resourceType": "CPU",
                          "averageUsageTarget": 75}}  # fmt: skip
    assert client.http.put(scaling, json=auto).status_code == 204
    assert client.get(app["id"])["spec"]["scalingStrategy"] == auto
    assert client.http.put(scaling, json={"fixed": {"replicas": 2}}).status_code == 204
    both = {"fixed": {"replicas": 1}, **auto}
    assert "both were given" in _error(client.http.put(scaling, json=both), 400)
    assert "exactly one" in _error(client.http.put(scaling, json={}), 400)
    assert "resourceType" in _error(
        client.http.put(scaling, json={"automatic": {"replicasMin": 1, "replicasMax": 2}}), 400
    )

    image = client.http.put(path + "/image", json={"url": "img:3"})
    assert image.status_code == 200
    assert client.get(app["id"])["spec"]["image"] == "img:3"


def test_capabilities_and_mounts(ovh: tuple[SandboxServer, Ovh]) -> None:
    running, client = ovh
    flavors = client.http.get("/v1/capabilities/flavor").json()
    by_id = {f["id"]: f for f in flavors}
    assert set(by_id) == {"ai1-1-cpu", "ai1-1-gpu", "l4-1-gpu", "l40s-1-gpu", "a100-1-gpu",
                          "h100-1-gpu"}  # fmt: skip
    assert by_id["ai1-1-gpu"]["gpuInformation"]["gpuModel"] == "Tesla-V100S"
    assert by_id["ai1-1-gpu"]["default"] is True
    assert by_id["ai1-1-cpu"]["type"] == "cpu"
    assert "gpuInformation" not in by_id["ai1-1-cpu"]
    assert by_id["l40s-1-gpu"]["resourcesPerUnit"]["memory"] > 0
    assert client.http.get("/v1/capabilities/flavor/l4-1-gpu").json()["max"] == 4
    assert _error(client.http.get("/v1/capabilities/flavor/nope"), 404)

    plain = httpx.Client(base_url=running.url, trust_env=False)
    tags = plain.get("/ollama/api/tags").json()
    assert {m["name"] for m in tags["models"]} >= {"llama3.2:latest"}
    health = plain.get("/_sandbox/health").json()
    assert health["status"] == "ok"
    assert health["apis"] == {"ovh": "/ovh", "runpod": "/runpod", "ollama": "/ollama"}
    assert plain.get("/runpod/v1/pods").status_code == 404
    assert plain.get("/_sandbox/nothing").status_code == 404
    plain.close()


def test_apps_created_within_one_millisecond_do_not_tie_on_created_at(
    parked: tuple[SandboxServer, Ovh], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Racing clients keep the oldest of the apps they both created: a tie would let each
    # think its own is the oldest, and two apps would run (and bill) for one name.
    from datetime import UTC, datetime

    from ondemand.sandbox.ovh import engine

    instant = datetime(2026, 12, 4, 15, 30, 50, 318_400, tzinfo=UTC)
    monkeypatch.setattr(engine, "now", lambda: instant)
    _, client = parked
    stamps = [client.create(name=f"twin-{i}")["createdAt"] for i in range(3)]
    assert stamps == ["2026-12-04T15:30:50.318Z", "2026-12-04T15:30:50.319Z",
                      "2026-12-04T15:30:50.320Z"]  # fmt: skip
