"""What still bills once compute is stopped, as `down` says it: storage that keeps the
model cache (or a pod's disk), with its monthly price where the provider lists one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, cast

import pytest

from ondemand.config import load_config
from ondemand.lifecycle import make_provider

IMAGE = "registry.example.com/team/ollama-ondemand:1.4.0"


class CloudProvider(Protocol):
    def stopped_note(self) -> str: ...
    def kept_after_delete(self) -> str: ...
    def close(self) -> None: ...


def _notes(tmp_path: Path, **env: str) -> tuple[str, str]:
    """What `down` says still bills, and what `delete` says outlives the deployment."""
    env = {"ONDEMAND_IMAGE": IMAGE, "RUNPOD_API_KEY": "rpa_x", "OVH_AI_TOKEN": "t", **env}
    made = make_provider(load_config(path=None, env=env, cwd=tmp_path), env)
    provider = cast(CloudProvider, made)
    try:
        return provider.stopped_note(), provider.kept_after_delete()
    finally:
        provider.close()


def _note(tmp_path: Path, **env: str) -> str:
    return _notes(tmp_path, **env)[0]


@pytest.mark.parametrize("provider", ["runpod", "ovh", "runpod-pod"])
def test_nothing_is_said_when_nothing_is_kept(tmp_path: Path, provider: str) -> None:
    extra = {"ONDEMAND_RUNPOD_POD_VOLUME": "0"} if provider == "runpod-pod" else {}
    assert _notes(tmp_path, ONDEMAND_PROVIDER=provider, **extra) == ("", "")


def test_a_runpod_network_volume_is_named_with_its_monthly_price(tmp_path: Path) -> None:
    note = _note(
        tmp_path,
        ONDEMAND_PROVIDER="runpod",
        ONDEMAND_RUNPOD_NETWORK_VOLUME="ollama-models@EU-RO-1",
        ONDEMAND_RUNPOD_NETWORK_VOLUME_SIZE="100",
    )
    assert "network volume ollama-models@EU-RO-1 (100 GB)" in note
    assert "about $7.00/month" in note


def test_an_ovh_bucket_is_named_with_an_estimate_of_its_monthly_price(tmp_path: Path) -> None:
    note = _note(
        tmp_path, ONDEMAND_PROVIDER="ovh", OLLAMA_VOLUME="ollama-cache@GRA:/var/lib/ollama:rw",
        ONDEMAND_MODELS="qwen3:8b,nomic-embed-text",
    )  # fmt: skip
    assert "Object Storage bucket ollama-cache" in note
    # 8b at ~0.6 GB per billion parameters, plus 5 GB for a tag without a size.
    assert "about 10 GB for these models: ~0.07 EUR/month at 0.007 EUR/GB/month" in note


def test_a_stopped_pod_bills_its_disk(tmp_path: Path) -> None:
    note = _note(tmp_path, ONDEMAND_PROVIDER="runpod-pod")
    assert "still bills its 50 GB volume disk" in note
    assert "down --delete" in note


def test_a_pods_disk_goes_with_it_and_a_network_volume_outlives_it(tmp_path: Path) -> None:
    stopped, deleted = _notes(tmp_path, ONDEMAND_PROVIDER="runpod-pod")
    assert "still bills its 50 GB volume disk" in stopped
    assert deleted == ""
    # With a network volume the pod has no volume disk: the volume is what bills and stays.
    settings = {"ONDEMAND_RUNPOD_NETWORK_VOLUME": "models@EU-RO-1"}
    stopped, deleted = _notes(tmp_path, ONDEMAND_PROVIDER="runpod-pod", **settings)
    assert "volume disk" not in stopped
    assert stopped == deleted
    assert "network volume models@EU-RO-1 (50 GB) keeps the model cache" in deleted


def test_what_keeps_the_cache_is_named_again_on_delete(tmp_path: Path) -> None:
    settings = {"OLLAMA_VOLUME": "ollama-cache@GRA:/var/lib/ollama:rw"}
    stopped, deleted = _notes(tmp_path, ONDEMAND_PROVIDER="ovh", **settings)
    assert deleted == stopped
    assert "Object Storage bucket ollama-cache" in deleted
