"""The AppSpec the ovh provider sends, field by field against OVH's AI API reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondemand.config import load_config
from ondemand.errors import ConfigError, CredentialsError
from ondemand.lifecycle import build_spec
from ondemand.providers.ovh import OvhProvider
from ondemand.providers.ovh_spec import check_image, flavor_for, parse_volume

LIB = "/var/lib/ollama"
IMAGE = "registry.gra.ai.cloud.ovh.net/proj/ollama-ondemand:2026-11-22"


def provider(tmp_path: Path, **env: str) -> OvhProvider:
    full = {"ONDEMAND_PROVIDER": "ovh", "OVH_AI_TOKEN": "ovh-token", "ONDEMAND_IMAGE": IMAGE,
            "PRELOAD_MODELS": "llama3.2,nomic-embed-text", **env}  # fmt: skip
    resolved = load_config(path=None, env=full, cwd=tmp_path)
    return OvhProvider(env=full, config=resolved)


def body(tmp_path: Path, **env: str) -> dict[str, object]:
    ovh = provider(tmp_path, **env)
    return ovh.app_spec(build_spec(ovh.resolved, "odk_user_key", "odk_admin_key"))


def test_the_app_spec_matches_the_reference_shape(tmp_path: Path) -> None:
    spec = body(tmp_path, OLLAMA_VOLUME="ollama-cache@GRA:/var/lib/ollama:rw", GPU_COUNT="2")
    assert spec["name"] == "ollama-ondemand"
    assert spec["image"] == IMAGE
    assert spec["defaultHttpPort"] == 8080
    assert spec["unsecureHttp"] is True
    assert spec["resources"] == {"flavor": "l4-1-gpu", "gpu": 2}
    assert spec["probe"] == {"path": "/ping", "port": 8080}
    assert spec["scalingStrategy"] == {"fixed": {"replicas": 1}}
    assert spec["volumes"] == [
        {
            "dataStore": {"alias": "GRA", "container": "ollama-cache"},
            "mountPath": "/var/lib/ollama",
            "permission": "RW",
            "cache": False,
        }
    ]
    env = {e["name"]: e["value"] for e in spec["envVars"]}  # type: ignore[attr-defined]
    assert env == {
        "AUTHORIZATION_APIKEY": "odk_user_key",
        "ONDEMAND_ADMIN_KEY": "odk_admin_key",
        "OLLAMA_MODELS": "/var/lib/ollama",
        "OLLAMA_PRELOAD_MODELS": "llama3.2,nomic-embed-text",
        "PORT": "8080",
    }
    assert all(set(e) == {"name", "value"} and isinstance(e["value"], str)
               for e in spec["envVars"])  # type: ignore[attr-defined]  # fmt: skip
    assert spec["labels"] == {"managed-by": "ollama-ondemand", "ondemand-name": "ollama-ondemand"}


def test_policy_and_gpu_requirements_travel_as_server_env(tmp_path: Path) -> None:
    spec = body(tmp_path, ONDEMAND_REQUIRE_GPU="true", ONDEMAND_GPU="H100",
                ONDEMAND_KEEP_ALIVE="10m", ONDEMAND_MAX_KEEP_ALIVE="1h",
                ONDEMAND_PROXY_WORKERS="3")  # fmt: skip
    env = {e["name"]: e["value"] for e in spec["envVars"]}  # type: ignore[attr-defined]
    assert env["ONDEMAND_PROXY_WORKERS"] == "3"
    assert env["ONDEMAND_REQUIRE_GPU"] == "1"
    assert env["ONDEMAND_GPU"] == "H100"
    assert (env["ONDEMAND_KEEP_ALIVE"], env["ONDEMAND_MAX_KEEP_ALIVE"]) == ("10m", "1h")
    assert spec["resources"] == {"flavor": "h100-1-gpu", "gpu": 1}


def test_automatic_scaling_when_min_and_max_are_set(tmp_path: Path) -> None:
    spec = body(tmp_path, ONDEMAND_OVH_REPLICAS_MIN="0", ONDEMAND_OVH_REPLICAS_MAX="2",
                ONDEMAND_OVH_AUTOSCALE_TARGET="60")  # fmt: skip
    assert spec["scalingStrategy"] == {
        "automatic": {"replicasMin": 0, "replicasMax": 2, "resourceType": "CPU",
                      "averageUsageTarget": 60}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "container", "alias", "prefix", "mount", "permission", "cache"),
    [
        ("ollama-cache@GRA:/var/lib/ollama:rw", "ollama-cache", "GRA", None, LIB, "RW", False),
        ("seed-cache@US-EAST-VA:/var/lib/ollama:rw", "seed-cache", "US-EAST-VA", None, LIB, "RW",
         False),
        ("bucket@GRA/models/:/data:RO:cache", "bucket", "GRA", "models/", "/data", "RO", True),
        # A custom S3 datastore keeps its case (OVH's S3 guide: s3-gra-1az@1azgra).
        ("s3-gra-1az@1azgra:/data:rw", "s3-gra-1az", "1azgra", None, "/data", "RW", False),
        ("bucket@S3GRA:/data", "bucket", "S3GRA", None, "/data", "RW", False),
        ("b@GRA:/data/:rwd:no-cache", "b", "GRA", None, "/data", "RWD", False),
    ],
)  # fmt: skip
def test_volumes_are_read_as_the_ovhai_cli_writes_them(
    text: str, container: str, alias: str, prefix: str | None, mount: str, permission: str,
    cache: bool,
) -> None:  # fmt: skip
    volume = parse_volume(text)
    assert (volume.container, volume.alias, volume.prefix) == (container, alias, prefix)
    assert (volume.mount, volume.permission, volume.cache) == (mount, permission, cache)


@pytest.mark.parametrize(
    "text", ["bucket", "bucket@GRA", "@GRA:/data", "bucket@GRA:data", "bucket@GRA:/",
             "bucket@GRA:/data:rx", "bucket@GRA:/data:rw:maybe", "a@b@c:/d"],
)  # fmt: skip
def test_malformed_volumes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid volume") as info:
        parse_volume(text)
    assert info.value.exit_code == 2
    assert "container@ALIAS:/mount/path" in str(info.value)


def test_gpu_models_map_to_flavors_and_unknown_ones_are_refused() -> None:
    assert flavor_for("l4", None) == "l4-1-gpu"
    assert flavor_for("A100-80GB", None) == "a100-1-gpu"
    assert flavor_for("Tesla-V100S", None) == "ai1-1-gpu"
    assert flavor_for("RTX 4090", "custom-flavor") == "custom-flavor"
    with pytest.raises(ConfigError, match="does not offer the GPU 'RTX 4090'"):
        flavor_for("RTX 4090", None)


@pytest.mark.parametrize(
    ("image", "ok"),
    [(IMAGE, True), ("ollama-ondemand:1", True), ("ghcr.io/org/img@sha256:" + "a" * 64, True),
     ("ollama-ondemand", False), ("registry:5000/org/img", False),
     ("registry:5000/org/img:2", True), (None, False), ("", False)],
)  # fmt: skip
def test_images_need_a_tag_or_digest(image: str | None, ok: bool) -> None:
    if ok:
        assert check_image(image) == image
    else:
        with pytest.raises(ConfigError):
            check_image(image)


def test_token_and_region_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="OVH_AI_TOKEN is not set") as missing:
        provider(tmp_path, OVH_AI_TOKEN="")
    assert missing.value.exit_code == 4
    assert "operator" in str(missing.value)
    with pytest.raises(ConfigError, match="unknown OVH region 'mars'"):
        provider(tmp_path, OVH_REGION="mars")
    assert (
        provider(tmp_path, OVH_REGION="bhs").client.api.base_url == "https://bhs.ai.cloud.ovh.net"
    )
    custom = provider(tmp_path, OVH_AI_API_URL="https://ai.example.test/v1/")
    assert custom.client.api.base_url == "https://ai.example.test"
