"""Parsing rules users hit through env vars and names: keep-alive, model names.

OLLAMA_HOST is read by ondemand/ollamahost.py for the emulator and the server alike
(tests/serve/test_settings_env.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondemand.sandbox.ollama import EmulatorConfig
from ondemand.sandbox.ollama.durations import (
    FOREVER_NS,
    DurationError,
    keep_alive_from_env,
    keep_alive_from_json,
    parse_go_duration,
    rfc3339,
)
from ondemand.sandbox.ollama.names import parse_name


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("10m", 600 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("1.5s", 1_500_000_000),
        ("300ms", 300_000_000),
        ("2µs", 2000),
        ("0", 0),
        ("-1m", -60 * 10**9),
    ],
)
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", 'time: missing unit in duration "-1"'),
        ("300", 'time: missing unit in duration "300"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("", 'time: invalid duration ""'),
        ("m", 'time: invalid duration "m"'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError) as error:
        parse_go_duration(text)
    assert str(error.value) == message


def test_keep_alive_values() -> None:
    assert keep_alive_from_json(-5) == FOREVER_NS
    assert keep_alive_from_json("-1h") == FOREVER_NS
    assert keep_alive_from_json(2.5) == 2_500_000_000
    assert keep_alive_from_json(None) is None
    with pytest.raises(DurationError, match="Unsupported type: 'bool'"):
        keep_alive_from_json(True)
    # The environment variable also takes whole seconds, unlike the API.
    assert keep_alive_from_env("300") == 300 * 10**9
    assert keep_alive_from_env("-1") == FOREVER_NS
    assert keep_alive_from_env("junk") == 300 * 10**9


def test_rfc3339_keeps_nanoseconds_and_drops_trailing_zeros() -> None:
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.5Z"
    assert rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(
    ("name", "display", "valid"),
    [
        ("llama3.2", "llama3.2:latest", True),
        ("llama3.2:latest", "llama3.2:latest", True),
        ("registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest", True),
        ("user/m:tag", "user/m:tag", True),
        ("hf.co/bartowski/X:Q4_K_M", "hf.co/bartowski/X:Q4_K_M", True),
        ("", ":latest", False),
        ("bad name", "bad name:latest", False),
        ("a/b/c/d", "a/b/c/d:latest", False),
    ],
)
def test_model_names(name: str, display: str, valid: bool) -> None:
    parsed = parse_name(name)
    assert parsed.display == display
    assert parsed.valid is valid


def test_names_compare_case_insensitively() -> None:
    assert (
        parse_name("Llama3.2").key == parse_name("registry.ollama.ai/library/llama3.2:LATEST").key
    )


def test_config_from_env(tmp_path: Path) -> None:
    config = EmulatorConfig.from_env(
        {
            "OLLAMA_EMULATOR_MODELS": "llama3.2, nomic-embed-text,bge-m3=embed,qwen3,tiny=think",
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "0",
            "OLLAMA_EMULATOR_TTFT": "0.5",
            "OLLAMA_EMULATOR_LOAD_TIME": "2",
            "OLLAMA_EMULATOR_RESPONSE_TOKENS": "7",
            "OLLAMA_EMULATOR_PULL_SECONDS": "3",
            "OLLAMA_EMULATOR_PULL_FAIL": "ghost,phantom",
            "OLLAMA_EMULATOR_CPU_MODELS": "qwen3",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_MODELS": str(tmp_path),
        }
    )
    kinds = {name: (spec.kind, spec.thinking) for name, spec in config.models.items()}
    assert kinds == {
        "llama3.2:latest": ("text", False),
        "nomic-embed-text:latest": ("embedding", False),
        "bge-m3:latest": ("embedding", False),
        "qwen3:latest": ("text", True),
        "tiny:latest": ("text", True),
    }
    assert (config.tokens_per_second, config.ttft, config.load_time) == (0.0, 0.5, 2.0)
    assert (config.response_tokens, config.pull_seconds) == (7, 3.0)
    assert config.pull_fails("GHOST:latest")
    assert not config.pull_fails("llama3.2")
    assert config.runs_on_cpu("qwen3:latest")
    assert config.keep_alive_ns == FOREVER_NS
    assert config.models_dir == tmp_path
    defaults = EmulatorConfig.from_env({})
    assert list(defaults.models) == ["llama3.2:latest", "nomic-embed-text:latest"]
    assert defaults.keep_alive_ns == 300 * 10**9
    assert defaults.models_dir is None
    assert EmulatorConfig.from_env({"OLLAMA_EMULATOR_MODELS": ""}).models == {}
