"""The emulated AI API's data sync: what it refuses, and a stop cutting a push short."""

from __future__ import annotations

from tests.cloud import FAST_APPS, StartSandbox

EMPTY_STORE = {**FAST_APPS, "OLLAMA_EMULATOR_MODELS": ""}


def test_a_data_sync_needs_a_running_app_and_a_stop_interrupts_it(
    start_sandbox: StartSandbox,
) -> None:
    _, api = start_sandbox(app_env=EMPTY_STORE, transition_seconds=0.5)
    volume = {
        "dataStore": {"alias": "s3-gra", "container": "c"},
        "mountPath": "/data",
        "permission": "RW",
        "cache": False,
    }
    app = api.create(volumes=[volume], envVars=[{"name": "AUTHORIZATION_APIKEY", "value": "k"}])
    refused = api.http.post(f"/v1/app/{app['id']}/datasync", json={"direction": "push"})
    assert refused.status_code == 400
    assert "needs a RUNNING app" in refused.json()["message"]
    bad = api.http.post(f"/v1/app/{app['id']}/datasync", json={"direction": "sideways"})
    assert bad.status_code == 400
    assert "direction" in bad.json()["message"]
    api.wait(app["id"], "RUNNING")
    answer = api.http.post(f"/v1/app/{app['id']}/datasync", json={"direction": "push"})
    assert answer.status_code == 200, answer.text
    sync = answer.json()
    assert sync["spec"]["direction"] == "push"
    assert sync["status"]["state"] == "QUEUED"
    assert sync["status"]["info"]["code"] == "DATASYNC_QUEUED"
    api.http.put(f"/v1/app/{app['id']}/stop")
    [listed] = api.wait(app["id"], "STOPPED")["status"]["dataSync"]
    assert listed["id"] == sync["id"]
    assert listed["status"]["state"] == "INTERRUPTED"
