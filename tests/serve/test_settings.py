"""The image's environment interface: preload list, ports, keep-alive, child environment."""

from __future__ import annotations

import pytest

from ondemand.errors import ConfigError
from ondemand.modelnames import canonical
from ondemand.proxy.policy import keep_alive_setting
from ondemand.serve.models import preload_list
from ondemand.serve.settings import ollama_port
from ondemand.serve.supervisor import child_environment


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("Llama3.2:LATEST", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2", "llama3.2:latest"),
        ("user/model", "user/model:latest"),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m"),
        ("localhost:5000/m", "localhost:5000/m:latest"),
    ],
)
def test_names_compare_as_ollama_looks_them_up(name: str, key: str) -> None:
    assert canonical(name) == key


def test_preload_list_reads_both_seed_spellings_once_each() -> None:
    env = {
        "OLLAMA_PRELOAD_MODELS": " llama3.2, qwen3:8b,,llama3.2:latest ",
        "PRELOAD_MODEL_B": "gpt-oss:20b",
        "PRELOAD_MODEL_A": "Qwen3:8B",
        "PRELOAD_MODELS_IGNORED": "not-this",
        "PRELOAD_MODEL_": "nor-this",
    }
    assert preload_list(env) == ("llama3.2", "qwen3:8b", "gpt-oss:20b")


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({}, 11434),
        ({"OLLAMA_HOST": "0.0.0.0:11434"}, 11434),
        ({"OLLAMA_HOST": "0.0.0.0:9999"}, 9999),
        ({"OLLAMA_HOST": "http://10.0.0.5:7000/"}, 7000),
        ({"OLLAMA_HOST": "0.0.0.0:1", "ONDEMAND_OLLAMA_HOST": "127.0.0.1:2345"}, 2345),
    ],
)
def test_ollama_port_comes_from_ollama_host_but_the_host_is_always_loopback(
    env: dict[str, str], port: int
) -> None:
    assert ollama_port(env) == port
    assert child_environment(env, port)["OLLAMA_HOST"] == f"127.0.0.1:{port}"


def test_a_bad_ollama_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OLLAMA_HOST has no valid port"):
        ollama_port({"OLLAMA_HOST": "127.0.0.1:http"})


@pytest.mark.parametrize(("raw", "sent"), [("-1", -1), ("300", 300), ("10m", "10m"), ("0", 0)])
def test_keep_alive_goes_as_a_number_when_unitless(raw: str, sent: str | int) -> None:
    # Ollama answers 400 to a unit-less string such as "-1".
    assert keep_alive_setting("ONDEMAND_KEEP_ALIVE", raw)[0] == sent


def test_child_environment_drops_every_secret() -> None:
    env = {
        "AUTHORIZATION_APIKEY": "k", "AUTHORIZATION_APIKEY_CI": "k", "ONDEMAND_ADMIN_KEY": "k",
        "ONDEMAND_BASIC_AUTH": "u:p", "OVHAI_BASIC_AUTH_PASSWORD": "p", "OVH_AI_TOKEN": "t",
        "RUNPOD_API_KEY": "r", "GITHUB_TOKEN": "g", "USER_MODEL_METRICS_WEBHOOK_API_KEY": "w",
        "OLLAMA_MODELS": "/var/lib/ollama", "CUDA_VISIBLE_DEVICES": "0",
    }  # fmt: skip
    child = child_environment(env, 11434)
    assert child == {
        "OLLAMA_MODELS": "/var/lib/ollama",
        "CUDA_VISIBLE_DEVICES": "0",
        "OLLAMA_HOST": "127.0.0.1:11434",
    }
