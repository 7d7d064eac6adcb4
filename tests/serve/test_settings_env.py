"""The server's settings: one rule per kind of value, the same answer from every reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ondemand.errors import ConfigError
from ondemand.ollamahost import OllamaHost, parse_ollama_host
from ondemand.proxy.settings import ProxySettings, normalise_upstream
from ondemand.sandbox.ollama.cli import _ollama_host as emulator_host
from ondemand.sandbox.ollama.standin import write_standin
from ondemand.serve.settings import ServeSettings, ollama_port

KEY = "k-" + "a" * 30


def go_string(where: OllamaHost) -> str:
    """What Ollama's ``Host().String()`` prints for the same value."""
    host = f"[{where.host}]" if ":" in where.host else where.host
    path = f"/{where.path}" if where.path else ""
    return f"{where.scheme}://{host}:{where.port}{path}"


# Ollama's own table: TestHost in envconfig/config_test.go (github.com/ollama/ollama,
# v0.33.0-rc2, fb30760996871fa9460115c753afd2c60d4ab0f7), plus "::1" with a path.
OLLAMA_CASES = {
    "": "http://127.0.0.1:11434",
    "1.2.3.4": "http://1.2.3.4:11434",
    ":1234": "http://:1234",
    "1.2.3.4:1234": "http://1.2.3.4:1234",
    "example.com": "http://example.com:11434",
    "example.com:1234": "http://example.com:1234",
    ":0": "http://:0",
    ":66000": "http://:11434",
    ":-1": "http://:11434",
    "[::1]": "http://[::1]:11434",
    "[::]": "http://[::]:11434",
    "::1": "http://[::1]:11434",
    "[::1]:1337": "http://[::1]:1337",
    " 1.2.3.4 ": "http://1.2.3.4:11434",
    '"1.2.3.4"': "http://1.2.3.4:11434",
    ' " 1.2.3.4 " ': "http://1.2.3.4:11434",
    "'1.2.3.4'": "http://1.2.3.4:11434",
    "http://1.2.3.4": "http://1.2.3.4:80",
    "http://1.2.3.4:4321": "http://1.2.3.4:4321",
    "https://1.2.3.4": "https://1.2.3.4:443",
    "https://1.2.3.4:4321": "https://1.2.3.4:4321",
    "https://example.com/ollama": "https://example.com:443/ollama",
    "ollama.com": "https://ollama.com:443",
    "http://[::1]:8080/": "http://[::1]:8080",
}


@pytest.mark.parametrize(("value", "expected"), OLLAMA_CASES.items())
def test_ollama_host_follows_ollamas_table(value: str, expected: str) -> None:
    assert go_string(parse_ollama_host(value)) == expected


@pytest.mark.parametrize(
    ("value", "connect"),
    [
        ("0.0.0.0:9000", "http://127.0.0.1:9000"),
        (":9000", "http://127.0.0.1:9000"),
        ("[::]:9000", "http://[::1]:9000"),
        ("::1", "http://[::1]:11434"),
        ("https://example.com/ollama/", "https://example.com:443/ollama"),
    ],
)
def test_unspecified_addresses_are_dialled_as_loopback(value: str, connect: str) -> None:
    assert parse_ollama_host(value).url == connect


@pytest.mark.parametrize(
    "value", ["::1", "[::1]:5000", ":7000", "0.0.0.0:9999", "http://10.0.0.5:7000/", "h:8"]
)
def test_every_reader_gets_the_same_answer(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    where = parse_ollama_host(value)
    # serve takes the port (Ollama itself always listens on loopback) ...
    assert ollama_port({"OLLAMA_HOST": value}) == where.port
    # ... the proxy the whole address, as a client dials it ...
    assert normalise_upstream(value) == where.url
    # ... and the emulator, standing in for Ollama, binds where Ollama would.
    monkeypatch.setenv("OLLAMA_HOST", value)
    assert emulator_host() == where


def test_ipv6_loopback_is_not_port_1() -> None:
    assert ollama_port({"OLLAMA_HOST": "::1"}) == 11434


@pytest.mark.parametrize("value", ["127.0.0.1:http", ":66000", "host:-1", ":0"])
def test_serve_refuses_a_port_ollama_would_silently_replace(value: str) -> None:
    with pytest.raises(ConfigError, match="OLLAMA_HOST has no valid port"):
        ollama_port({"OLLAMA_HOST": value})
    # The emulator, like Ollama, falls back to the default port instead.
    assert parse_ollama_host(value).port in (11434, 0)


def test_the_upstream_must_be_http() -> None:
    with pytest.raises(ConfigError, match="ONDEMAND_UPSTREAM"):
        normalise_upstream("ftp://example.com")
    with pytest.raises(ConfigError, match="ONDEMAND_UPSTREAM"):
        normalise_upstream("example.com:99999")


# -- durations, booleans, ports: through the real settings objects ------------------------


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return {"OLLAMA_BIN": str(write_standin(tmp_path / "bin")), "AUTHORIZATION_APIKEY": KEY}


def serve_settings(base: dict[str, str], **extra: str) -> ServeSettings:
    return ServeSettings.from_env({**base, **extra})


# (variable, how to read its value from ServeSettings, 0 allowed?)
Getter = Callable[[ServeSettings], float | None]
DURATIONS: list[tuple[str, Getter, bool]] = [
    ("ONDEMAND_DRAIN_TIMEOUT", lambda s: s.drain_timeout, True),
    ("ONDEMAND_IDLE_STOP", lambda s: s.idle_stop, True),
    ("ONDEMAND_MAX_LIFETIME", lambda s: s.max_lifetime, True),
    ("ONDEMAND_BODY_TIMEOUT", lambda s: s.proxy.body_timeout, False),
    ("ONDEMAND_UPSTREAM_CONNECT_TIMEOUT", lambda s: s.proxy.connect_timeout, False),
]


@pytest.mark.parametrize(("name", "get", "zero_ok"), DURATIONS)
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("0.5", 0.5), ("45s", 45.0), ("2m", 120.0), ("1h30m", 5400.0), (" 3m ", 180.0)],
)
def test_every_duration_reads_every_spelling_the_same(
    base_env: dict[str, str], name: str, get: Getter, zero_ok: bool, text: str, seconds: float
) -> None:
    assert get(serve_settings(base_env, **{name: text})) == seconds


@pytest.mark.parametrize(("name", "get", "zero_ok"), DURATIONS)
def test_zero_is_allowed_only_where_the_setting_says(
    base_env: dict[str, str], name: str, get: Getter, zero_ok: bool
) -> None:
    if zero_ok:
        # A drain timeout of 0 stops at once; an idle stop or lifetime of 0 is off.
        assert get(serve_settings(base_env, **{name: "0"})) in (0.0, None)
    else:
        with pytest.raises(ConfigError, match=f"{name} must be a duration of more than 0"):
            serve_settings(base_env, **{name: "0"})


@pytest.mark.parametrize(("name", "get", "zero_ok"), DURATIONS)
@pytest.mark.parametrize("text", ["-1", "soon", "nan", "inf", "1x"])
def test_a_bad_duration_names_the_variable(
    base_env: dict[str, str], name: str, get: Getter, zero_ok: bool, text: str
) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be a duration"):
        serve_settings(base_env, **{name: text})


def test_webhook_durations_use_the_same_rule() -> None:
    env = {"AUTHORIZATION_APIKEY": KEY, "USER_MODEL_METRICS_WEBHOOK_URL": "http://127.0.0.1:9/u"}
    webhook = ProxySettings.from_env({**env, "ONDEMAND_WEBHOOK_INTERVAL": "1m30s"}).webhook
    assert webhook is not None
    assert webhook.interval == 90.0
    with pytest.raises(ConfigError, match="ONDEMAND_WEBHOOK_TIMEOUT must be a duration of more"):
        ProxySettings.from_env({**env, "ONDEMAND_WEBHOOK_TIMEOUT": "0"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("on", True), ("YES", True), ("true", True), ("0", False), ("off", False)],
)
def test_booleans_read_one_way(base_env: dict[str, str], text: str, value: bool) -> None:
    settings = serve_settings(base_env, ONDEMAND_REQUIRE_GPU=text, AUTHORIZATION_LOG_JSON=text)
    assert settings.policy.require_gpu is value
    assert settings.proxy.log_json is value


@pytest.mark.parametrize("name", ["ONDEMAND_REQUIRE_GPU", "AUTHORIZATION_LOG_JSON"])
def test_a_boolean_that_is_neither_is_refused(base_env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be 1, true"):
        serve_settings(base_env, **{name: "maybe"})


@pytest.mark.parametrize(("name", "text"), [("PORT", "0"), ("PORT", "65536"), ("PORT_HEALTH", "x")])
def test_ports(base_env: dict[str, str], name: str, text: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be a port number \\(1-65535\\)"):
        serve_settings(base_env, **{name: text})


def test_sizes(base_env: dict[str, str]) -> None:
    assert serve_settings(base_env, ONDEMAND_MAX_BODY="64m").proxy.max_body == 64 * 2**20
    assert serve_settings(base_env, ONDEMAND_MAX_BODY="10MB").proxy.max_body == 10**7
    with pytest.raises(ConfigError, match="ONDEMAND_MAX_BODY must be bytes or a size"):
        serve_settings(base_env, ONDEMAND_MAX_BODY="lots")


def test_empty_values_are_the_defaults(base_env: dict[str, str]) -> None:
    blank = {name: "  " for name, _, _ in DURATIONS} | {"PORT": "", "ONDEMAND_MAX_BODY": " "}

    def seen(s: ServeSettings) -> tuple[object, ...]:
        values = [get(s) for _, get, _ in DURATIONS]
        return (*values, s.port, s.proxy.max_body)

    assert seen(serve_settings(base_env, **blank)) == seen(serve_settings(base_env))
    assert seen(serve_settings(base_env)) == (25.0, None, None, 30.0, 10.0, 8080, 64 * 2**20)


@pytest.mark.parametrize(
    "name",
    [
        "ONDEMAND_ADMIN_KEY",
        "AUTHORIZATION_APIKEY",
        "AUTHORIZATION_APIKEY_CI",
        "ONDEMAND_BASIC_AUTH",
        "OVHAI_BASIC_AUTH_PASSWORD",
        "ONDEMAND_RUN_KEY_SECRET",
        "USER_MODEL_METRICS_WEBHOOK_API_KEY",
    ],
)
@pytest.mark.parametrize("value", ["\n", " \t ", "hunter2-secret\n", " hunter2-secret"])
def test_a_key_variable_blank_or_padded_is_refused_without_its_value(
    base_env: dict[str, str], name: str, value: str
) -> None:
    env = {**base_env, "OVHAI_BASIC_AUTH_USER": "u", "ONDEMAND_ADMIN_KEY": "admin-" + KEY}
    env |= {"USER_MODEL_METRICS_WEBHOOK_URL": "http://127.0.0.1:9/u", name: value}
    with pytest.raises(ConfigError) as error:
        ServeSettings.from_env(env)
    assert name in str(error.value)
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize("value", ["u: ", " :p", "u:p\n", "u:\t"])
def test_basic_auth_pairs_follow_the_same_rule(base_env: dict[str, str], value: str) -> None:
    with pytest.raises(ConfigError, match="ONDEMAND_BASIC_AUTH"):
        serve_settings(base_env, ONDEMAND_BASIC_AUTH=value)


def test_an_upstream_error_does_not_echo_what_looks_like_a_password() -> None:
    with pytest.raises(ConfigError, match="ONDEMAND_UPSTREAM has no valid port") as error:
        normalise_upstream("http://user:hunter2@example.com")
    assert "hunter2" not in str(error.value)
