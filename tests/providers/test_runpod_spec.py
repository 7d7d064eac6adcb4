"""How `gpu:` and the `runpod:` settings become RunPod's pools, type ids and volumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondemand.config import load_config
from ondemand.errors import ConfigError
from ondemand.providers.runpod_spec import (
    POOLS,
    parse_network_volume,
    pod_gpu_type,
    serverless_gpus,
)


@pytest.mark.parametrize(
    ("gpu", "pool"),
    [("L4", "AMPERE_24"), ("rtx 4090", "ADA_24"), ("4090", "ADA_24"), ("L40S", "ADA_48_PRO"),
     ("A100", "AMPERE_80"), ("H100", "ADA_80_PRO"), ("NVIDIA H200", "HOPPER_141"),
     ("ampere_16", "AMPERE_16")],
)  # fmt: skip
def test_a_gpu_model_selects_its_serverless_pool(gpu: str, pool: str) -> None:
    assert serverless_gpus(gpu, None, None)[0] == [pool]


def test_cards_where_ollama_falls_back_to_the_cpu_are_excluded_unless_asked_for() -> None:
    # AMPERE_24 is the L4 with two sm_86 cards.
    assert serverless_gpus("L4", None, None) == (
        ["AMPERE_24"],
        ["NVIDIA RTX A5000", "NVIDIA GeForce RTX 3090"],
    )
    # Asking for an sm_86 card keeps it; its sm_86 neighbour is still excluded.
    assert serverless_gpus("A6000", None, None) == (["AMPERE_48"], ["NVIDIA A40"])
    # A whole pool of sm_86 cards asked for by name is not emptied.
    assert serverless_gpus("AMPERE_48", None, None) == (["AMPERE_48"], [])
    # An explicit list wins; "none" (the way to say it in an env var) excludes nothing.
    assert serverless_gpus("L4", None, ["none"]) == (["AMPERE_24"], [])
    assert serverless_gpus("L4", ["AMPERE_24", "ADA_24"], ["3090"]) == (
        ["AMPERE_24", "ADA_24"],
        ["NVIDIA GeForce RTX 3090"],
    )


def test_names_the_tables_do_not_know_go_to_runpod_unless_they_cannot_be_an_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A model name that is no pool and no type id cannot be sent: refused, listing pools.
    with pytest.raises(ConfigError, match="no GPU model or pool 'RTX 9999'") as unknown:
        serverless_gpus("RTX 9999", None, None)
    assert all(pool in (unknown.value.hint or "") for pool in POOLS)
    # Pools and types newer than the tables are RunPod's to accept or refuse.
    assert serverless_gpus("L4", ["ADA_99"], None)[0] == ["ADA_99"]
    assert serverless_gpus("BLACKWELL_288", None, None)[0] == ["BLACKWELL_288"]
    assert serverless_gpus("L4", None, ["GTX 1080"])[1] == ["GTX 1080"]
    assert "sent as written" in caplog.text
    assert pod_gpu_type("NVIDIA GeForce RTX 5080") == "NVIDIA GeForce RTX 5080"


def test_pods_take_one_type_id() -> None:
    assert pod_gpu_type("L4") == "NVIDIA L4"
    assert pod_gpu_type("rtx 4090") == "NVIDIA GeForce RTX 4090"
    assert pod_gpu_type("RTX 6000 Ada") == "NVIDIA RTX 6000 Ada Generation"
    with pytest.raises(ConfigError, match="is a serverless pool"):
        pod_gpu_type("AMPERE_24")


def test_network_volumes_are_name_at_data_center() -> None:
    volume = parse_network_volume("ollama-models@eu-ro-1")
    assert (volume.name, volume.data_center) == ("ollama-models", "EU-RO-1")
    with pytest.raises(ConfigError, match="not NAME@DATACENTER"):
        parse_network_volume("ollama-models")
    # No fixed list: data centers open every month, and RunPod's catalog is checked instead.
    for data_center in ("US-MD-1", "US-MO-2", "US-NE-1", "US-OR-1", "MARS-1"):
        assert parse_network_volume(f"models@{data_center}").data_center == data_center


def test_the_runpod_section_reads_lists_from_the_environment(tmp_path: Path) -> None:
    env = {
        "ONDEMAND_RUNPOD_GPU_POOLS": "ADA_24, AMPERE_24",
        "ONDEMAND_RUNPOD_WORKERS_MAX": "3",
        "ONDEMAND_RUNPOD_NETWORK_VOLUME": "models@EU-RO-1",
    }
    runpod = load_config(path=None, env=env, cwd=tmp_path).config.runpod
    assert runpod.gpu_pools == ["ADA_24", "AMPERE_24"]
    assert runpod.workers_max == 3
    assert runpod.network_volume == "models@EU-RO-1"
    assert runpod.exclude_gpu_types is None
    with pytest.raises(ConfigError, match="ONDEMAND_RUNPOD_WORKERS_MAX"):
        load_config(path=None, env={"ONDEMAND_RUNPOD_WORKERS_MAX": "0"}, cwd=tmp_path)
