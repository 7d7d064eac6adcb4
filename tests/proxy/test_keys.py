"""Where keys come from: env variables, the keys file, Basic auth, and failing closed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ondemand.errors import ConfigError
from ondemand.keys import KEY_PREFIX, mint
from ondemand.proxy.auth import AuthFailure, keystore_from_env, sha256_form


def _bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


def test_env_keys_are_named_by_their_variable() -> None:
    store = keystore_from_env(
        {
            "AUTHORIZATION_APIKEY": "key-default-123456",
            "AUTHORIZATION_APIKEY_CI": "key-ci-123456789",
            "AUTHORIZATION_APIKEY_EMPTY": "",
            "ONDEMAND_ADMIN_KEY": "key-admin-123456",
        }
    )
    assert store.authenticate(_bearer("key-default-123456")).name == "apikey"
    ci = store.authenticate(_bearer("key-ci-123456789"))
    assert (ci.name, ci.admin) == ("apikey_ci", False)
    admin = store.authenticate(_bearer("key-admin-123456"))
    assert (admin.name, admin.admin) == ("admin", True)
    # An empty variable is not an accepted empty key.
    with pytest.raises(AuthFailure):
        store.authenticate(_bearer(""))


@pytest.mark.parametrize(
    "env",
    [{}, {"AUTHORIZATION_APIKEY": ""}, {"ONDEMAND_INSECURE_NO_AUTH": "0"}],
    ids=["nothing", "empty", "insecure-off"],
)
def test_no_key_fails_closed(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="refuses to start") as info:
        keystore_from_env(env)
    assert "ondemand keys new" in str(info.value)


def test_keys_file_entries_with_hashes_roles_and_models(tmp_path: Path) -> None:
    ci_key, ops_key = "odk_ci_secret_value", "odk_ops_secret_value"
    keys_file = tmp_path / "keys.yml"
    keys_file.write_text(
        "# keys for the staging GPU\n"
        f"- name: ci\n  sha256: {sha256_form(ci_key)}\n  models: [llama3.2, qwen3:8b]\n"
        "  max_concurrency: 2\n  rpm: 60\n"
        f"- name: ops\n  key: {ops_key}\n  admin: true\n"
    )
    store = keystore_from_env({"ONDEMAND_KEYS_FILE": str(keys_file)})
    ci = store.authenticate(_bearer(ci_key))
    assert (ci.name, ci.admin) == ("ci", False)
    assert ci.entry is not None
    assert ci.entry.models == frozenset({"llama3.2:latest", "qwen3:8b"})
    assert (ci.entry.max_concurrency, ci.entry.rpm) == (2, 60)
    assert store.authenticate(_bearer(ops_key)).admin is True
    assert ci_key not in repr(ci) + repr(store.entries)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("- name: a\n  key: k1\n  sha256: sha256:" + "0" * 64 + "\n", "exactly one of 'key'"),
        ("- name: a\n", "exactly one of 'key'"),
        ("- name: a\n  sha256: sha256:abc\n", "64 hex digits"),
        ("- name: a\n  key: k\n  modles: [x]\n", "keys.yml:3:3: unknown field in a key entry"),
        ("- name: a\n  key: k\n  rpm: 0\n", "'rpm' must be a whole number"),
        ("- name: a\n  key: k\n  admin: yes-please\n", "'admin' must be true or false"),
        ("- key: k\n", "'name' is required"),
        ("name: a\nkey: k\n", "must be a YAML list"),
        ("- name: a\n  key: [unclosed\n", "not valid YAML"),
        ("- name: a\n  key: k1\n- name: a\n  key: k2\n", "two keys are named 'a'"),
    ],
)
def test_keys_file_problems_are_reported_with_the_line(
    tmp_path: Path, content: str, problem: str
) -> None:
    keys_file = tmp_path / "keys.yml"
    keys_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        keystore_from_env({"ONDEMAND_KEYS_FILE": str(keys_file)})
    assert problem in str(info.value)


def test_a_missing_keys_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the keys file"):
        keystore_from_env({"ONDEMAND_KEYS_FILE": str(tmp_path / "absent.yml")})


def test_a_key_in_two_places_under_one_name_is_refused(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yml"
    keys_file.write_text("- name: admin\n  key: other-admin-key\n")
    with pytest.raises(ConfigError, match="two keys are named 'admin'"):
        keystore_from_env({"ONDEMAND_ADMIN_KEY": "x" * 20, "ONDEMAND_KEYS_FILE": str(keys_file)})


def test_ovh_basic_auth_variables_need_each_other() -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        keystore_from_env({"OVHAI_BASIC_AUTH_USER": "u"})
    store = keystore_from_env({"OVHAI_BASIC_AUTH_USER": "u", "OVHAI_BASIC_AUTH_PASSWORD": "p"})
    header = b"Basic " + base64.b64encode(b"u:p")
    assert store.authenticate([(b"authorization", header)]).name == "u"


def test_minted_keys_are_random_prefixed_and_match_their_hash(tmp_path: Path) -> None:
    first, second = mint("ci", models=("llama3.2", " ", "llama3.2")), mint()
    assert first.key.startswith(KEY_PREFIX)
    assert first.key != second.key
    assert len(first.key) >= 40
    assert first.models == ("llama3.2",)
    keys_file = tmp_path / "keys.yml"
    keys_file.write_text(first.keys_file_entry() + "\n")
    assert first.key not in keys_file.read_text()
    store = keystore_from_env({"ONDEMAND_KEYS_FILE": str(keys_file)})
    assert store.authenticate(_bearer(first.key)).name == "ci"
