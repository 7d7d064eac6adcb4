"""Injected faults: HTTP errors, slow transitions, no capacity, a create answered 500."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from ondemand.sandbox.faults import HttpFault, SandboxFaults
from ondemand.sandbox.server import SandboxServer, create_sandbox
from tests.cloud import Ovh, StartSandbox


def _faults(running: SandboxServer, method: str, body: object = None) -> httpx.Response:
    return httpx.request(
        method, running.url + "/_sandbox/faults", json=body, timeout=10, trust_env=False
    )


def test_http_faults_answer_the_next_matching_requests(start_sandbox: StartSandbox) -> None:
    running, client = start_sandbox(faults={"ovh": {"slow": {"seconds": {"QUEUED": 60}}}})
    rules = [
        {"route": "POST /v1/app", "status": 429, "times": 2, "retry_after": 3},
        {"route": "GET /v1/app*", "status": 503},
        {"route": "PUT /v1/app/*/start", "status": 500, "message": "boom"},
        {"route": "/v1/me", "status": 502},
    ]
    added = _faults(running, "POST", {"ovh": {"http": rules}})
    assert added.status_code == 200, added.text
    assert [r["route"] for r in added.json()["ovh"]["http"]] == [r["route"] for r in rules]

    for _ in range(2):
        limited = client.http.post("/v1/app", json={"image": "x"})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"
        assert limited.json() == {"message": "Too many requests, please retry later"}
    app_id = client.create()["id"]
    unavailable = client.http.get(f"/v1/app/{app_id}")
    assert unavailable.status_code == 503
    assert "retry-after" not in unavailable.headers
    assert set(unavailable.json()) == {"message"}
    assert client.http.get(f"/v1/app/{app_id}").status_code == 200
    assert client.http.put(f"/v1/app/{app_id}/stop").status_code == 204
    assert client.http.put(f"/v1/app/{app_id}/start").json() == {"message": "boom"}
    assert client.http.get("/v1/me").status_code == 502
    assert _faults(running, "GET").json()["ovh"]["http"] == []

    _faults(running, "POST", {"ovh": {"http": [{"route": "*", "status": 429}]}})
    assert client.http.get("/v1/app").headers["retry-after"] == "1"
    _faults(running, "POST", {"ovh": {"http": [{"route": "*", "times": 5}], "no_capacity": 2}})
    cleared = _faults(running, "DELETE").json()["ovh"]
    assert cleared == {"http": [], "slow": {"multiplier": 1.0, "seconds": {}}, "no_capacity": 0,
                       "created_then_500": 0, "platform_error": 0}  # fmt: skip
    assert client.http.get("/v1/app").status_code == 200


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"aws": {}}, "unknown API 'aws'"),
        ({"ovh": {"http": [{"route": "POST /v1/app", "status": 200}]}}, "400-599"),
        ({"ovh": {"http": [{"status": 500}]}}, "needs a 'route'"),
        ({"ovh": {"http": [{"route": "v1/app"}]}}, "expected 'METHOD /path'"),
        ({"ovh": {"http": [{"route": "/x", "times": 0}]}}, "times must be"),
        ({"ovh": {"slow": {"seconds": {"RUNNING": 1}}}}, "'RUNNING' is not one of"),
        ({"ovh": {"slow": {"multiplier": -1}}}, "multiplier"),
        ({"ovh": {"no_capacity": "1"}}, "no_capacity"),
        ({"ovh": {"outage": 1}}, "unknown fault kind"),
        (["ovh"], "keyed by API"),
    ],
)
def test_invalid_fault_documents_change_nothing(
    idle_ovh: tuple[SandboxServer, Ovh], document: object, expected: str
) -> None:
    running, _ = idle_ovh
    before = _faults(running, "GET").json()
    answer = _faults(running, "POST", document)
    assert answer.status_code == 400
    assert expected in answer.json()["message"]
    assert _faults(running, "GET").json() == before


def test_no_capacity_fails_the_next_start_without_running_anything(
    start_sandbox: StartSandbox,
) -> None:
    faults = {"ovh": {"no_capacity": 1, "slow": {"seconds": {"INITIALIZING": 60}}}}
    running, client = start_sandbox(faults=faults)
    app = client.wait(client.create(resources={"flavor": "l40s-1-gpu"})["id"], "FAILED")
    assert [h["state"] for h in app["status"]["history"]] == ["QUEUED", "FAILED"]
    assert app["status"]["info"]["code"] == "APP_FAILED"
    assert "no L40S available" in app["status"]["info"]["message"]
    assert "quota" in app["status"]["info"]["message"]
    assert running.sandbox.runner.processes == {}
    # FAILED apps may be started again; this time there is capacity.
    assert client.http.put(f"/v1/app/{app['id']}/start").status_code == 204
    client.wait(app["id"], "INITIALIZING")
    assert client.http.put(f"/v1/app/{app['id']}/stop").status_code == 204
    client.wait(app["id"], "STOPPED")


def test_a_create_answered_500_still_creates_the_app(start_sandbox: StartSandbox) -> None:
    faults = {"ovh": {"created_then_500": 1, "slow": {"seconds": {"QUEUED": 60}}}}
    _, client = start_sandbox(faults=json.dumps(faults))
    answer = client.http.post("/v1/app", json={"image": "x", "name": "half"})
    assert answer.status_code == 500
    assert answer.json() == {"message": "Internal server error"}
    items = client.http.get("/v1/app").json()["items"]
    assert [(a["spec"]["name"], a["status"]["state"]) for a in items] == [("half", "QUEUED")]
    assert client.http.post("/v1/app", json={"image": "x"}).status_code == 200


def test_slow_transitions(start_sandbox: StartSandbox) -> None:
    running, client = start_sandbox(faults={"ovh": {"slow": {"multiplier": 20}}})
    app_id = client.create()["id"]  # QUEUED lasts 0.05 s × 20
    time.sleep(0.5)
    assert client.state(app_id) == "QUEUED"
    _faults(running, "POST", {"ovh": {"slow": {"seconds": {"INITIALIZING": 60}}}})
    app = client.wait(app_id, "INITIALIZING", timeout=5)
    queued, initializing = (h["date"] for h in app["status"]["history"])
    assert initializing > queued
    time.sleep(0.3)
    assert client.state(app_id) == "INITIALIZING"
    assert client.http.put(f"/v1/app/{app_id}/stop").status_code == 204
    client.wait(app_id, "STOPPED")


def test_startup_faults_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        create_sandbox(tmp_path, faults="{ovh")
    with pytest.raises(ValueError, match="unknown API"):
        create_sandbox(tmp_path, faults='{"aws": {}}')


def test_route_patterns() -> None:
    listing = HttpFault("GET /v1/app*")
    assert listing.matches("GET", "/v1/app")
    assert listing.matches("get", "/v1/app/abc/log")
    assert not listing.matches("PUT", "/v1/app/abc")
    start = HttpFault("PUT /v1/app/*/start")
    assert start.matches("PUT", "/v1/app/abc/start")
    assert not start.matches("PUT", "/v1/app/abc/stop")
    anything = HttpFault("/v1/me")
    assert anything.matches("GET", "/v1/me")
    assert anything.matches("DELETE", "/v1/me")
    faults = SandboxFaults(("ovh",))
    faults.add({"ovh": {"http": [{"route": "*", "times": 2}]}})
    assert faults["ovh"].take_http("GET", "/x") is not None
    assert faults["ovh"].take_http("GET", "/y") is not None
    assert faults["ovh"].take_http("GET", "/z") is None
