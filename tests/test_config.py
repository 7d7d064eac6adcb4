"""The config cascade: layers, sources, durations, secrets and the error messages users see."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from ondemand.config import (
    ENV_VARS,
    Config,
    ResolvedConfig,
    env_name,
    format_duration,
    load_config,
    parse_duration,
)
from ondemand.errors import ConfigError


def write(directory: Path, text: str, name: str = "ondemand.yml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(
    cwd: Path,
    env: dict[str, str] | None = None,
    flags: dict[str, object] | None = None,
    path: Path | None = None,
) -> ResolvedConfig:
    return load_config(path=path, env=env or {}, flags=flags, cwd=cwd)


def problems(
    cwd: Path,
    env: dict[str, str] | None = None,
    flags: dict[str, object] | None = None,
    path: Path | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(cwd, env, flags, path)
    assert info.value.exit_code == 2
    return info.value.message.splitlines()


# ---------------------------------------------------------------- the cascade


def test_defaults_without_file_env_or_flags(tmp_path: Path) -> None:
    resolved = load(tmp_path)
    config = resolved.config
    assert resolved.file is None
    assert resolved.sources == {}
    assert config.name == "ollama-ondemand"
    assert config.provider == "local"
    assert config.models == []
    assert (config.gpu, config.gpu_count, config.cpu, config.memory) == ("L4", 1, 4, "16Gi")
    assert config.port == 8080
    assert config.timeout == timedelta(minutes=15)
    assert config.idle_timeout == timedelta(minutes=30)
    assert config.lease_ttl == timedelta(hours=3)
    assert config.max_lifetime == timedelta(hours=8)
    assert config.export_env is True
    assert config.require_gpu is False
    assert resolved.secrets.api_key is None


def test_file_beats_default(tmp_path: Path) -> None:
    write(tmp_path, "# comment\nname: demo\ntimeout: 20m\nmodels:\n  - llama3\n  - qwen3:4b\n")
    resolved = load(tmp_path)
    assert resolved.file == tmp_path / "ondemand.yml"
    assert resolved.config.name == "demo"
    assert resolved.config.timeout == timedelta(minutes=20)
    assert resolved.config.models == ["llama3", "qwen3:4b"]
    assert resolved.sources == {
        "name": "ondemand.yml:2",
        "timeout": "ondemand.yml:3",
        "models": "ondemand.yml:4",
    }
    assert resolved.source("gpu") == "default"


def test_env_beats_file(tmp_path: Path) -> None:
    write(tmp_path, "timeout: 20m\ngpu: L4\n")
    resolved = load(tmp_path, env={"ONDEMAND_TIMEOUT": "1h", "ONDEMAND_GPU": "H100"})
    assert resolved.config.timeout == timedelta(hours=1)
    assert resolved.config.gpu == "H100"
    assert resolved.sources["timeout"] == "env ONDEMAND_TIMEOUT"
    assert resolved.sources["gpu"] == "env ONDEMAND_GPU"


def test_seed_alias_is_read_and_loses_to_ondemand_name(tmp_path: Path) -> None:
    env = {"GPU_MODEL": "A100", "PRELOAD_MODELS": "kimi:k2,glm-4:9b", "OVH_REGION": "GRA"}
    resolved = load(tmp_path, env=env)
    assert resolved.config.gpu == "A100"
    assert resolved.config.models == ["kimi:k2", "glm-4:9b"]
    assert resolved.config.region == "GRA"
    assert resolved.sources["gpu"] == "env GPU_MODEL"

    resolved = load(tmp_path, env={**env, "ONDEMAND_GPU": "H100"})
    assert resolved.config.gpu == "H100"
    assert resolved.sources["gpu"] == "env ONDEMAND_GPU"


@pytest.mark.parametrize(
    ("alias", "field", "raw", "value"),
    [
        ("PRELOAD_MODELS", "models", "a,b", ["a", "b"]),
        ("GPU_MODEL", "gpu", "L40S", "L40S"),
        ("GPU_COUNT", "gpu_count", "2", 2),
        ("CPU_COUNT", "cpu", "8", 8),
        ("MEMORY_SIZE", "memory", "32Gi", "32Gi"),
        ("OLLAMA_VOLUME", "volume", "cache@GRA:/var/lib/ollama:rw", "cache@GRA:/var/lib/ollama:rw"),
        ("OVH_REGION", "region", "US-EAST-VA", "US-EAST-VA"),
    ],
)
def test_every_seed_alias(tmp_path: Path, alias: str, field: str, raw: str, value: object) -> None:
    resolved = load(tmp_path, env={alias: raw})
    assert getattr(resolved.config, field) == value
    assert resolved.sources[field] == f"env {alias}"


def test_flag_beats_env(tmp_path: Path) -> None:
    write(tmp_path, "timeout: 20m\n")
    resolved = load(
        tmp_path,
        env={"ONDEMAND_TIMEOUT": "1h"},
        flags={"timeout": "5m", "gpu_count": 2, "lease_ttl": timedelta(hours=1)},
    )
    assert resolved.config.timeout == timedelta(minutes=5)
    assert resolved.config.gpu_count == 2
    assert resolved.config.lease_ttl == timedelta(hours=1)
    assert resolved.sources["timeout"] == "flag --timeout"
    assert resolved.sources["lease_ttl"] == "flag --lease-ttl"


def test_flags_given_as_none_are_not_set(tmp_path: Path) -> None:
    resolved = load(tmp_path, env={"ONDEMAND_GPU": "H100"}, flags={"gpu": None})
    assert resolved.config.gpu == "H100"


def test_empty_env_values_count_as_unset(tmp_path: Path) -> None:
    write(tmp_path, "gpu: L40S\n")
    resolved = load(tmp_path, env={"ONDEMAND_GPU": "", "GPU_MODEL": "  ", "ONDEMAND_TIMEOUT": ""})
    assert resolved.config.gpu == "L40S"
    assert resolved.sources["gpu"] == "ondemand.yml:1"


def test_other_ondemand_variables_are_not_errors(tmp_path: Path) -> None:
    env = {
        "ONDEMAND_KEYS_FILE": "/keys.yml",
        "ONDEMAND_MAX_BODY": "1024",
        "ONDEMAND_INSECURE_NO_AUTH": "1",
        "ONDEMAND_SOMETHING_ELSE": "x",
    }
    assert load(tmp_path, env=env).config == Config()


def test_models_are_split_stripped_and_deduplicated(tmp_path: Path) -> None:
    resolved = load(tmp_path, env={"ONDEMAND_MODELS": " llama3 ,, qwen3:4b,llama3,\n gemma3 "})
    assert resolved.config.models == ["llama3", "qwen3:4b", "gemma3"]
    assert load(tmp_path, flags={"models": "a,b,a"}).config.models == ["a", "b"]
    write(tmp_path, "models: [a, b, a, '']\n")
    assert load(tmp_path).config.models == ["a", "b"]


def test_empty_models_flag_clears_the_file_list(tmp_path: Path) -> None:
    write(tmp_path, "models: [a]\n")
    assert load(tmp_path, flags={"models": ""}).config.models == []


def test_null_in_file_means_unset(tmp_path: Path) -> None:
    write(tmp_path, "timeout:\nregion: ~\nrunpod:\n")
    resolved = load(tmp_path)
    assert resolved.config.timeout == timedelta(minutes=15)
    assert resolved.sources == {}


def test_yaml_values_of_other_types_are_read_as_meant(tmp_path: Path) -> None:
    write(
        tmp_path,
        "gpu_count: 2\nrequire_gpu: true\nexport_env: 'false'\nkeep_alive: -1\ntimeout: 900\n",
    )
    config = load(tmp_path).config
    assert config.gpu_count == 2
    assert config.require_gpu is True
    assert config.export_env is False
    assert config.keep_alive == "-1"
    assert config.timeout == timedelta(seconds=900)


def test_booleans_from_env(tmp_path: Path) -> None:
    env = {"ONDEMAND_REQUIRE_GPU": "1", "ONDEMAND_EXPORT_ENV": "false"}
    config = load(tmp_path, env=env).config
    assert (config.require_gpu, config.export_env) == (True, False)


# ---------------------------------------------------------------- which file


def test_config_env_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "name: from-default\n")
    other = write(tmp_path, "name: from-env\n", name="ci.yml")
    resolved = load(tmp_path, env={"ONDEMAND_CONFIG": str(other)})
    assert resolved.config.name == "from-env"
    assert resolved.file == other
    assert resolved.sources["name"] == f"{other}:1"


def test_explicit_path_beats_config_env(tmp_path: Path) -> None:
    write(tmp_path, "name: from-flag\n", name="flag.yml")
    write(tmp_path, "name: from-env\n", name="env.yml")
    resolved = load(tmp_path, env={"ONDEMAND_CONFIG": "env.yml"}, path=Path("flag.yml"))
    assert resolved.config.name == "from-flag"
    assert resolved.sources["name"] == "flag.yml:1"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, path=Path("nope.yml"))
    assert info.value.message == "config file not found: nope.yml"
    assert info.value.cause is not None
    assert "--config" in info.value.cause

    with pytest.raises(ConfigError) as info:
        load(tmp_path, env={"ONDEMAND_CONFIG": "missing.yml"})
    assert info.value.message == "config file not found: missing.yml"
    assert info.value.cause is not None
    assert "ONDEMAND_CONFIG" in info.value.cause


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    write(tmp_path, "# nothing yet\n")
    resolved = load(tmp_path)
    assert resolved.config == Config()
    assert resolved.file == tmp_path / "ondemand.yml"


# ---------------------------------------------------------------- error messages


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    write(tmp_path, "name: demo\ngpu: L4\n\nmodles: [llama3]\n")
    assert problems(tmp_path) == ["ondemand.yml:4: unknown key 'modles' — did you mean 'models'?"]


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    write(tmp_path, "frobnicate: 1\n")
    assert problems(tmp_path) == ["ondemand.yml:1: unknown key 'frobnicate'"]


def test_kebab_case_key_suggests_underscores(tmp_path: Path) -> None:
    write(tmp_path, "idle-timeout: 5m\n")
    assert problems(tmp_path) == [
        "ondemand.yml:1: unknown key 'idle-timeout' — did you mean 'idle_timeout'?"
    ]


def test_nested_unknown_key_is_shown_with_its_path(tmp_path: Path) -> None:
    write(tmp_path, "runpod:\n  wokers: 2\novh:\n  timeout: 5m\n")
    assert problems(tmp_path) == [
        "ondemand.yml:2: unknown key 'runpod.wokers' — did you mean 'runpod.workers_min'?",
        # A known key under the wrong section points at where it belongs.
        "ondemand.yml:4: unknown key 'ovh.timeout' — did you mean 'timeout'?",
    ]


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "runpod: 3\n")
    assert problems(tmp_path) == ["ondemand.yml:1: runpod: must be a mapping of settings, got 3"]


def test_bad_value_points_at_its_line(tmp_path: Path) -> None:
    write(tmp_path, "name: demo\n\n\n\n\n\ntimeout: abc\n")
    assert problems(tmp_path) == [
        "ondemand.yml:7: timeout: invalid duration 'abc': use a number and a unit, "
        "like 90s, 15m or 3h"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("name: My_App", "name: must be lowercase letters, digits and '-'"),
        ("name: -x", "name: must be lowercase letters, digits and '-'"),
        (f"name: {'a' * 64}", "name: must be lowercase letters"),
        ("provider: aws", "provider: must be one of 'local', 'ovh', 'runpod', 'runpod-pod' or"),
        ("gpu_count: 0", "gpu_count: must be at least 1, got 0"),
        ("cpu: many", "cpu: must be an integer, got 'many'"),
        ("memory: 16GB", "memory: must be a size in Mi or Gi, like 16Gi or 512Mi, got '16GB'"),
        ("port: 70000", "port: must be at most 65535, got 70000"),
        ("gpu: ''", "gpu: must not be empty"),
        ("require_gpu: maybe", "require_gpu: must be true or false, got 'maybe'"),
        ("keep_alive: 2d", "keep_alive: must be an Ollama keep-alive"),
        ("models: {a: 1}", "models: must be a list of model names or a comma-separated string"),
        ("models: ['\"llama3\"']", "models: '\"llama3\"' is not a model name"),
        ("lease_ttl: -5m", "lease_ttl: invalid duration '-5m'"),
    ],
)
def test_value_errors(tmp_path: Path, line: str, message: str) -> None:
    write(tmp_path, f"{line}\n")
    (problem,) = problems(tmp_path)
    assert problem.startswith(f"ondemand.yml:1: {message}")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "name: demo\nmodels: [llama3\n")
    (problem,) = problems(tmp_path)
    assert problem.startswith("ondemand.yml:3: invalid YAML: expected ',' or ']'")
    assert "flow sequence that starts on line 2" in problem


def test_yaml_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    write(tmp_path, "image: x\nsecret_thing: 'hunter22-unterminated\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "hunter22" not in str(info.value)
    assert info.value.message.startswith("ondemand.yml:3: invalid YAML:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "- llama3\n- qwen3\n")
    assert problems(tmp_path) == [
        "ondemand.yml:1: the top level must be a mapping of settings (key: value), got a list"
    ]


def test_duplicate_keys(tmp_path: Path) -> None:
    write(tmp_path, "provider: runpod\ngpu: L4\nprovider: ovh\nrunpod: {}\novh:\n  {}\n")
    assert problems(tmp_path) == [
        "ondemand.yml:3: duplicate key 'provider' (first set on line 1)",
    ]


def test_duplicate_key_message_does_not_echo_values(tmp_path: Path) -> None:
    write(tmp_path, "image: first-value-xyz\nimage: second-value-xyz\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "value-xyz" not in str(info.value)


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    assert problems(tmp_path, env={"ONDEMAND_GPU_COUNT": "two"}) == [
        "ONDEMAND_GPU_COUNT: must be an integer, got 'two'"
    ]
    assert problems(tmp_path, env={"CPU_COUNT": "lots"}) == [
        "CPU_COUNT: must be an integer, got 'lots'"
    ]


def test_flag_error_names_the_flag(tmp_path: Path) -> None:
    assert problems(tmp_path, flags={"idle_timeout": "soon"}) == [
        "--idle-timeout: invalid duration 'soon': use a number and a unit, like 90s, 15m or 3h"
    ]
    assert problems(tmp_path, flags={"no_such_thing": "1"}) == [
        "--no-such-thing: unknown setting 'no_such_thing'"
    ]


def test_all_problems_are_reported_together_in_file_order(tmp_path: Path) -> None:
    write(tmp_path, "timeout: abc\nmodles: [a]\ngpu_count: 0\n")
    lines = problems(tmp_path, env={"ONDEMAND_PORT": "http"}, flags={"memory": "lots"})
    assert lines == [
        "ondemand.yml:1: timeout: invalid duration 'abc': use a number and a unit, "
        "like 90s, 15m or 3h",
        "ondemand.yml:2: unknown key 'modles' — did you mean 'models'?",
        "ondemand.yml:3: gpu_count: must be at least 1, got 0",
        "ONDEMAND_PORT: must be an integer, got 'http'",
        "--memory: must be a size in Mi or Gi, like 16Gi or 512Mi, got 'lots'",
    ]


def test_an_overridden_bad_value_is_still_reported(tmp_path: Path) -> None:
    # The file is what is wrong, and it is committed: fix it rather than hide it.
    write(tmp_path, "timeout: abc\n")
    (problem,) = problems(tmp_path, env={"ONDEMAND_TIMEOUT": "5m"})
    assert problem.startswith("ondemand.yml:1: timeout: invalid duration 'abc'")


def test_error_has_a_next_step(tmp_path: Path) -> None:
    write(tmp_path, "modles: []\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert info.value.hint is not None
    assert "docs/configuration.md" in info.value.hint


# ---------------------------------------------------------------- secrets


def test_secrets_from_env_and_flags(tmp_path: Path) -> None:
    env = {
        "ONDEMAND_API_KEY": "odk_user_key",
        "ONDEMAND_ADMIN_KEY": "odk_admin_key",
        "OVH_AI_TOKEN": "ovh-token-value",
        "RUNPOD_API_KEY": "rp-key-value",
        "GITHUB_TOKEN": "ghs_default",
    }
    resolved = load(tmp_path, env=env, flags={"api_key": "from-flag"})
    secrets = resolved.secrets
    assert secrets.api_key is not None
    assert secrets.api_key.get_secret_value() == "from-flag"
    assert secrets.admin_key is not None
    assert secrets.admin_key.get_secret_value() == "odk_admin_key"
    assert secrets.ovh_token is not None
    assert secrets.ovh_token.get_secret_value() == "ovh-token-value"
    assert secrets.runpod_api_key is not None
    assert secrets.runpod_api_key.get_secret_value() == "rp-key-value"
    assert secrets.github_token is not None
    assert secrets.github_token.get_secret_value() == "ghs_default"
    assert resolved.sources["api_key"] == "flag --api-key"
    assert resolved.sources["github_token"] == "env GITHUB_TOKEN"
    assert sorted(secrets.secret_values()) == sorted(
        ["from-flag", "odk_admin_key", "ovh-token-value", "rp-key-value", "ghs_default"]
    )


def test_ondemand_github_token_beats_github_token(tmp_path: Path) -> None:
    env = {"GITHUB_TOKEN": "ghs_default", "ONDEMAND_GITHUB_TOKEN": "ghp_chosen"}
    secrets = load(tmp_path, env=env).secrets
    assert secrets.github_token == SecretStr("ghp_chosen")


def test_secret_flag_accepts_secretstr(tmp_path: Path) -> None:
    secrets = load(tmp_path, flags={"runpod_api_key": SecretStr("rp-x")}).secrets
    assert secrets.runpod_api_key == SecretStr("rp-x")


@pytest.mark.parametrize(
    ("text", "line", "variable"),
    [
        ("api_key: sk-do-not-print-me\n", 1, "ONDEMAND_API_KEY"),
        ("name: demo\nrunpod_api_key: sk-do-not-print-me\n", 2, "RUNPOD_API_KEY"),
        ("runpod:\n  api_key: sk-do-not-print-me\n", 2, "RUNPOD_API_KEY"),
        ("ovh:\n  token: sk-do-not-print-me\n", 2, "OVH_AI_TOKEN"),
        ("github_token: sk-do-not-print-me\n", 1, "ONDEMAND_GITHUB_TOKEN"),
    ],
)
def test_known_secret_in_file_is_refused(
    tmp_path: Path, text: str, line: int, variable: str
) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    rendered = str(info.value)
    assert "sk-do-not-print-me" not in rendered
    (problem,) = info.value.message.splitlines()
    assert problem.startswith(f"ondemand.yml:{line}: ")
    assert f"set {variable} in the environment" in problem
    assert info.value.hint is not None
    assert "GitHub secret" in info.value.hint


@pytest.mark.parametrize("key", ["password", "token", "hf_token", "webhook_secret", "deploy_key"])
def test_secret_looking_unknown_key_is_refused(tmp_path: Path, key: str) -> None:
    write(tmp_path, f"{key}: do-not-print-me\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "do-not-print-me" not in str(info.value)
    assert info.value.message == (
        f"ondemand.yml:1: {key}: secrets are never read from the file; remove it and pass it "
        "in an environment variable (in a workflow, from a GitHub secret)"
    )


def test_summary_redacts_secrets(tmp_path: Path) -> None:
    write(tmp_path, "timeout: 1h30m\nmodels: [a, b]\n")
    resolved = load(tmp_path, env={"RUNPOD_API_KEY": "rp-very-secret"})
    rows = {key: (value, source) for key, value, source in resolved.summary()}
    assert rows["timeout"] == ("1h30m", "ondemand.yml:1")
    assert rows["models"] == ("a, b", "ondemand.yml:2")
    assert rows["region"] == ("-", "default")
    assert rows["export_env"] == ("true", "default")
    assert rows["runpod_api_key"] == ("***", "env RUNPOD_API_KEY")
    assert rows["api_key"] == ("-", "default")
    assert "rp-very-secret" not in repr(resolved.summary())
    assert "rp-very-secret" not in repr(resolved)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("3h", 10800),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("1h 30m", 5400),
        ("0s", 0),
        ("900", 900),
        (" 60 ", 60),
        (45, 45),
        (0, 0),
    ],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["abc", "", " ", "-5m", "1.5h", "15M", "10ms", "3w", "m", "30m1h", "1h1h", "5 m x"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="use a number and a unit, like 90s, 15m or 3h") as info:
        parse_duration(text)
    assert str(info.value).startswith(f"invalid duration {text!r}")


@pytest.mark.parametrize("value", [-1, True])
def test_parse_duration_rejects_other_numbers(value: int) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "1m30s"), (900, "15m"), (5400, "1h30m"), (86400, "1d"), (93784, "1d2h3m4s")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_durations_serialise_as_text() -> None:
    dumped = Config().model_dump(mode="json")
    assert dumped["timeout"] == "15m"
    assert Config.model_json_schema()["properties"]["lease_ttl"]["default"] == "3h"


# ---------------------------------------------------------------- the env table


def test_env_names() -> None:
    assert env_name("timeout") == "ONDEMAND_TIMEOUT"
    assert env_name("gpu_count") == "ONDEMAND_GPU_COUNT"
    assert env_name("ovh_token") == "OVH_AI_TOKEN"
    assert env_name("github_token") == "ONDEMAND_GITHUB_TOKEN"
    with pytest.raises(KeyError):
        env_name("nope")


def test_env_table_is_complete_and_unambiguous() -> None:
    names = [name for var in ENV_VARS for name in (var.name, *var.aliases)]
    assert len(names) == len(set(names))
    paths = {var.path for var in ENV_VARS}
    assert set(Config.model_fields) - {"ovh", "runpod"} <= paths
    assert {var.path: var.aliases for var in ENV_VARS if var.aliases} == {
        "models": ("PRELOAD_MODELS",),
        "gpu": ("GPU_MODEL",),
        "gpu_count": ("GPU_COUNT",),
        "cpu": ("CPU_COUNT",),
        "memory": ("MEMORY_SIZE",),
        "volume": ("OLLAMA_VOLUME",),
        "region": ("OVH_REGION",),
        "github_token": ("GITHUB_TOKEN",),
    }


def test_importing_config_is_not_needed_for_the_cli_help() -> None:
    # The CLI imports config lazily; importing the package must not drag pydantic in.
    code = "import sys, ondemand, ondemand.errors, ondemand.gha; print('pydantic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_yaml_merge_keys_work_and_their_problems_point_at_the_defining_line(
    tmp_path: Path,
) -> None:
    write(tmp_path, "runpod: &shared {}\nmodels: &m [llama3.2]\n<<: {timeout: 20m}\n")
    resolved = load(tmp_path)
    assert resolved.config.timeout == timedelta(minutes=20)
    assert resolved.config.models == ["llama3.2"]
    write(tmp_path, "ovh: &base\n  timeout: 5x\nrunpod:\n  <<: *base\n")
    found = problems(tmp_path)
    assert any(line.startswith("ondemand.yml:2: unknown key 'ovh.timeout'") for line in found)
    assert any(line.startswith("ondemand.yml:2: unknown key 'runpod.timeout'") for line in found)
