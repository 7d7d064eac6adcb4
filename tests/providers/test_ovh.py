"""The OVH provider against the sandbox's emulated AI API, over loopback HTTP: what it
sends, how it reuses, updates and recreates apps, and how it survives the API's faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ondemand.config import load_config
from ondemand.errors import ConfigError, CredentialsError, ProviderError
from ondemand.lifecycle import deploy, down, make_provider, status
from ondemand.providers.base import LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, Status
from ondemand.providers.ovh import LABEL_SPEC, OvhProvider
from ondemand.sandbox.server import SandboxServer
from tests.cloud import Ovh, StartSandbox

IMAGE = "registry.example.com/team/ollama-ondemand:1.4.0"
USER_KEY = "odk_ovh_provider_user_key_0123456789"
ADMIN_KEY = "odk_ovh_provider_admin_key_0123456789"


@dataclass
class Sent:
    """Every request the provider sent, as the server received it."""

    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def routes(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    def bodies(self, method: str, path_end: str) -> list[Any]:
        return [
            json.loads(r.content) if r.content else None
            for r in self.requests
            if r.method == method and r.url.path.endswith(path_end)
        ]


@dataclass
class Cloud:
    running: SandboxServer
    api: Ovh
    tmp: Path
    made: list[OvhProvider] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "ONDEMAND_PROVIDER": "ovh",
            "OVH_AI_API_URL": self.running.ovh_url,
            "OVH_AI_TOKEN": self.running.sandbox.operator_token,
            "ONDEMAND_IMAGE": IMAGE,
            "ONDEMAND_API_KEY": USER_KEY,
            "ONDEMAND_ADMIN_KEY": ADMIN_KEY,
            "ONDEMAND_TIMEOUT": "30s",
            **extra,
        }

    def provider(self, **extra: str) -> tuple[OvhProvider, Sent, Any]:
        env = self.env(**extra)
        resolved = load_config(path=None, env=env, cwd=self.tmp)
        provider = make_provider(resolved, env)
        assert isinstance(provider, OvhProvider)
        self.made.append(provider)
        sent = Sent()
        provider.client.api.http.event_hooks["request"].append(sent)
        return provider, sent, resolved

    def apps(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.http.get("/v1/app").json()["items"]
        return items

    def faults(self, **document: object) -> None:
        answer = httpx.post(f"{self.running.url}/_sandbox/faults", json={"ovh": document})
        assert answer.status_code == 200, answer.text


@pytest.fixture
def cloud(start_sandbox: StartSandbox, tmp_path: Path) -> Iterator[Cloud]:
    running, api = start_sandbox()
    made = Cloud(running, api, tmp_path)
    yield made
    for provider in made.made:
        provider.close()


def _env_vars(body: Mapping[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in body["envVars"]}


# -- what goes over the wire ---------------------------------------------------------------


def test_deploy_sends_the_app_spec_of_the_reference_field_by_field(cloud: Cloud) -> None:
    provider, sent, resolved = cloud.provider(
        ONDEMAND_MODELS="llama3.2,qwen2.5:0.5b",
        GPU_MODEL="L40S",
        GPU_COUNT="2",
        OLLAMA_VOLUME="ollama-cache@GRA/models:/var/lib/ollama:rw",
    )
    deployed = deploy(resolved, provider, keep_running=True)
    assert deployed.detail == "created"

    [create] = [r for r in sent.requests if r.method == "POST"]
    assert create.url.path == "/ovh/v1/app"
    assert create.headers["content-type"] == "application/json"
    assert create.headers["authorization"] == f"Bearer {cloud.running.sandbox.operator_token}"
    body = json.loads(create.content)
    assert set(body) == {
        "name", "image", "envVars", "resources", "volumes", "defaultHttpPort",
        "unsecureHttp", "labels", "probe", "deploymentStrategy", "scalingStrategy",
    }  # fmt: skip
    # A long first pull must not outlast the platform's 600 s deadline for the probe.
    assert body["deploymentStrategy"] == {"progressDeadlineSeconds": 3 * 3600}
    assert body["name"] == "ollama-ondemand"
    assert body["image"] == IMAGE
    assert body["resources"] == {"flavor": "l40s-1-gpu", "gpu": 2}
    assert body["volumes"] == [
        {
            "dataStore": {"alias": "GRA", "container": "ollama-cache", "prefix": "models"},
            "mountPath": "/var/lib/ollama",
            "permission": "RW",
            "cache": False,
        }
    ]
    assert body["defaultHttpPort"] == 8080
    assert body["unsecureHttp"] is True
    assert body["probe"] == {"path": "/ping", "port": 8080}
    assert body["scalingStrategy"] == {"fixed": {"replicas": 1}}
    labels = body["labels"]
    assert labels[LABEL_MANAGED_BY] == MANAGED_BY
    assert labels[LABEL_NAME] == "ollama-ondemand"
    assert len(labels[LABEL_SPEC]) == 16
    assert all(set(e) == {"name", "value"} for e in body["envVars"])
    assert all(isinstance(e["value"], str) for e in body["envVars"])
    env = _env_vars(body)
    assert env["OLLAMA_PRELOAD_MODELS"] == "llama3.2,qwen2.5:0.5b"
    assert env["AUTHORIZATION_APIKEY"] == USER_KEY
    assert env["PORT"] == "8080"
    assert env["OLLAMA_MODELS"] == "/var/lib/ollama"

    # The platform answered with the App; its labels include the platform's own.
    [app] = cloud.apps()
    assert app["spec"]["labels"]["ovh/id"] == app["id"]
    assert app["spec"]["image"] == IMAGE


def test_automatic_scaling_is_sent_as_the_reference_shapes_it(cloud: Cloud) -> None:
    provider, _, _ = cloud.provider(ONDEMAND_OVH_REPLICAS_MIN="1", ONDEMAND_OVH_REPLICAS_MAX="3")
    spec = provider.app_spec(_spec(cloud))
    assert spec["scalingStrategy"] == {
        "automatic": {
            "replicasMin": 1,
            "replicasMax": 3,
            "resourceType": "CPU",
            "averageUsageTarget": 75,
        }
    }


def _spec(cloud: Cloud) -> Any:
    from ondemand.lifecycle import build_spec

    _, _, resolved = cloud.provider()
    return build_spec(resolved, USER_KEY, None)


def test_start_stop_and_delete_are_bodiless_puts_and_a_delete_answered_204(
    cloud: Cloud,
) -> None:
    provider, sent, resolved = cloud.provider()
    deploy(resolved, provider, keep_running=True)
    app_id = cloud.apps()[0]["id"]
    cloud.api.wait(app_id, "RUNNING")
    stopped = provider.stop("ollama-ondemand")
    assert stopped.status in (Status.STOPPING, Status.STOPPED)
    cloud.api.wait(app_id, "STOPPED")
    provider.start("ollama-ondemand")
    cloud.api.wait(app_id, "RUNNING")
    provider.delete("ollama-ondemand")
    cloud.api.wait_gone(app_id)

    puts = [r for r in sent.requests if r.method == "PUT"]
    assert [r.url.path for r in puts] == [
        f"/ovh/v1/app/{app_id}/stop",
        f"/ovh/v1/app/{app_id}/start",
    ]
    assert all(r.content == b"" for r in puts)
    [delete] = [r for r in sent.requests if r.method == "DELETE"]
    # A running app can only be deleted with force.
    assert delete.url.path == f"/ovh/v1/app/{app_id}"
    assert delete.url.params["force"] == "true"


def test_apps_are_found_by_label_selector(cloud: Cloud) -> None:
    provider, sent, _ = cloud.provider()
    assert provider.status("ollama-ondemand").status is Status.ABSENT
    [listing] = sent.requests
    assert listing.url.path == "/ovh/v1/app"
    assert listing.url.params["labelSelector"] == f"{LABEL_NAME}=ollama-ondemand"


# -- one app per name: reuse, update in place, recreate ---------------------------------------


def test_deploying_again_changes_nothing_and_a_new_spec_updates_the_same_app(
    cloud: Cloud,
) -> None:
    provider, sent, resolved = cloud.provider()
    first = deploy(resolved, provider)
    assert first.detail == "created, then stopped"
    app_id = cloud.apps()[0]["id"]
    cloud.api.wait(app_id, "STOPPED")

    provider, sent, resolved = cloud.provider()
    assert deploy(resolved, provider).detail == "unchanged"
    # One look at the app's env (its keys and per-run key epoch), one to compare the spec.
    assert [r.method for r in sent.requests] == ["GET", "GET"]

    provider, sent, resolved = cloud.provider(ONDEMAND_MODELS="llama3.2,nomic-embed-text")
    assert deploy(resolved, provider).detail == "updated"
    [update] = sent.bodies("PUT", f"/v1/app/{app_id}")
    # Only what changed, and never the probe: no published UpdateInput carries it.
    assert update == {
        "envVars": [{"name": "OLLAMA_PRELOAD_MODELS", "value": "llama3.2,nomic-embed-text"}]
    }
    [app] = cloud.apps()
    assert app["id"] == app_id
    assert _env_vars(app["spec"])["OLLAMA_PRELOAD_MODELS"] == "llama3.2,nomic-embed-text"


def test_an_update_the_api_refuses_recreates_the_app_and_never_leaves_a_false_label(
    cloud: Cloud,
) -> None:
    provider, _, resolved = cloud.provider()
    deploy(resolved, provider, keep_running=True)
    old = cloud.apps()[0]
    cloud.api.wait(old["id"], "RUNNING")
    old_label = old["spec"]["labels"][LABEL_SPEC]
    refusal = {"route": "PUT /v1/app/*", "status": 400, "message": "envVars cannot be updated"}

    # Running: refused, and the app keeps the label of the spec it runs.
    cloud.faults(http=[refusal])
    provider, _, resolved = cloud.provider(ONDEMAND_MODELS="llama3.2,nomic-embed-text")
    with pytest.raises(ProviderError, match="OVH refused the update"):
        deploy(resolved, provider)
    [app] = cloud.apps()
    assert app["spec"]["labels"][LABEL_SPEC] == old_label

    # Stopped: recreated from the new spec, on the same bucket.
    down(resolved, provider, force=True)
    cloud.faults(http=[refusal])
    provider, _, resolved = cloud.provider(ONDEMAND_MODELS="llama3.2,nomic-embed-text")
    assert deploy(resolved, provider).detail == "recreated, then stopped"
    cloud.api.wait_gone(old["id"])
    [app] = cloud.apps()
    assert app["spec"]["labels"][LABEL_SPEC] != old_label
    assert _env_vars(app["spec"])["OLLAMA_PRELOAD_MODELS"] == "llama3.2,nomic-embed-text"


def test_a_new_volume_recreates_a_stopped_app_and_is_refused_on_a_running_one(
    cloud: Cloud,
) -> None:
    provider, _, resolved = cloud.provider(OLLAMA_VOLUME="cache-a@GRA:/var/lib/ollama")
    deploy(resolved, provider, keep_running=True)
    old_id = cloud.apps()[0]["id"]
    cloud.api.wait(old_id, "RUNNING")

    provider, sent, resolved = cloud.provider(OLLAMA_VOLUME="cache-b@GRA:/var/lib/ollama")
    with pytest.raises(ProviderError, match="cannot update in place"):
        deploy(resolved, provider)
    assert not [r for r in sent.requests if r.method != "GET"]

    down(resolved, provider)
    provider, _, resolved = cloud.provider(OLLAMA_VOLUME="cache-b@GRA:/var/lib/ollama")
    assert deploy(resolved, provider).detail == "recreated, then stopped"
    cloud.api.wait_gone(old_id)
    [app] = cloud.apps()
    assert app["id"] != old_id
    assert app["spec"]["volumes"][0]["dataStore"]["container"] == "cache-b"


# -- faults -------------------------------------------------------------------------------


def test_a_create_answered_500_after_creating_makes_no_duplicate(cloud: Cloud) -> None:
    cloud.faults(created_then_500=1)
    provider, sent, resolved = cloud.provider()
    deployed = deploy(resolved, provider, keep_running=True)
    assert deployed.status is not Status.ABSENT
    assert len(cloud.apps()) == 1
    # The retry looked the app up before creating again, and found it.
    assert sent.routes().count("POST /ovh/v1/app") == 1


def test_429_is_retried_after_the_retry_after_it_asks_for(cloud: Cloud) -> None:
    cloud.faults(http=[{"route": "GET /v1/app", "status": 429, "times": 1, "retry_after": 1}])
    provider, sent, _ = cloud.provider()
    began = time.monotonic()
    assert provider.status("ollama-ondemand").status is Status.ABSENT
    assert time.monotonic() - began >= 0.95
    assert len(sent.requests) == 2


def test_5xx_is_retried_and_4xx_is_not(cloud: Cloud) -> None:
    cloud.faults(http=[{"route": "GET /v1/app", "status": 503, "times": 2}])
    provider, sent, resolved = cloud.provider()
    assert provider.status("ollama-ondemand").status is Status.ABSENT
    assert len(sent.requests) == 3

    deploy(resolved, provider)
    cloud.api.wait(cloud.apps()[0]["id"], "STOPPED")
    cloud.faults(http=[{"route": "PUT /v1/app/*/start", "status": 400, "message": "no"}])
    provider, sent, _ = cloud.provider()
    with pytest.raises(ProviderError, match=r"refused to start the app: no \(HTTP 400\)"):
        provider.start("ollama-ondemand")
    assert sent.routes().count(f"PUT /ovh/v1/app/{cloud.apps()[0]['id']}/start") == 1


def test_retries_stop_at_the_commands_deadline(cloud: Cloud) -> None:
    cloud.faults(http=[{"route": "GET /v1/app", "status": 503, "times": 100}])
    provider, _, _ = cloud.provider(ONDEMAND_TIMEOUT="2s")
    began = time.monotonic()
    with pytest.raises(Exception, match="HTTP 503"):
        provider.status("ollama-ondemand")
    assert time.monotonic() - began < 2.5


def test_a_wrong_or_read_only_token_is_a_credentials_error(cloud: Cloud) -> None:
    provider, _, _ = cloud.provider(OVH_AI_TOKEN="not-a-token")
    with pytest.raises(CredentialsError, match="HTTP 401") as wrong:
        provider.status("ollama-ondemand")
    assert "OVH_AI_TOKEN" in (wrong.value.hint or "")
    assert "not-a-token" not in wrong.value.render()

    provider, _, resolved = cloud.provider(OVH_AI_TOKEN=cloud.running.sandbox.read_token)
    assert provider.status("ollama-ondemand").status is Status.ABSENT  # reading is allowed
    with pytest.raises(CredentialsError, match="HTTP 403") as read_only:
        deploy(resolved, provider)
    assert "operator" in (read_only.value.hint or "")
    assert cloud.apps() == []


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"OVH_AI_TOKEN": ""}, "OVH_AI_TOKEN is not set"),
        ({"OVH_AI_API_URL": "", "OVH_REGION": "MARS"}, "unknown OVH region 'MARS'"),
        ({"OLLAMA_VOLUME": "no-region:/var/lib/ollama"}, "volume"),
        ({"ONDEMAND_IMAGE": "registry.example.com/ollama-ondemand"}, "has no tag"),
        ({"GPU_MODEL": "RTX4090"}, "does not offer the GPU 'RTX4090'"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_sent(
    cloud: Cloud, setting: dict[str, str], message: str
) -> None:
    def attempt() -> None:
        provider, _, resolved = cloud.provider(**setting)
        deploy(resolved, provider)

    with pytest.raises((ConfigError, CredentialsError), match=message):
        attempt()
    assert cloud.apps() == []


# -- what status costs -------------------------------------------------------------------


def test_status_of_a_running_app_takes_at_most_two_api_calls(cloud: Cloud) -> None:
    provider, _, resolved = cloud.provider()
    deploy(resolved, provider, keep_running=True)
    cloud.api.wait(cloud.apps()[0]["id"], "RUNNING")
    for extra in ({}, {"ONDEMAND_API_KEY": ""}):  # the key from the app's env costs one call
        provider, sent, resolved = cloud.provider(**extra)
        report = status(resolved, provider)
        assert report["vendor_state"] == "RUNNING"
        assert report["url"]
        assert report["cost"]["hourly"] > 0
        assert len(sent.requests) <= 2, sent.routes()


@pytest.mark.parametrize(
    ("region", "base"),
    [
        ("GRA", "https://gra.ai.cloud.ovh.net"),
        ("bhs", "https://bhs.ai.cloud.ovh.net"),
        ("US-EAST-VA", "https://us-east-va.ai.cloud.ovh.us"),
    ],
)
def test_the_region_chooses_the_ai_api_and_an_explicit_url_wins(
    cloud: Cloud, region: str, base: str
) -> None:
    provider, _, _ = cloud.provider(OVH_AI_API_URL="", OVH_REGION=region)
    assert provider.client.api.base_url == base
    provider, _, _ = cloud.provider(OVH_REGION=region)
    assert provider.client.api.base_url == cloud.running.ovh_url
