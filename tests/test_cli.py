"""The command line as a user meets it: help, version, exit codes, JSON, Actions output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ondemand import __version__
from ondemand.cli import cli, main
from tests.clirun import run

INTERFACE_COMMANDS = {
    "init", "build", "deploy", "start", "stop", "up", "down", "status", "delete",
    "watchdog", "reap", "serve", "proxy", "keys", "sandbox",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GITHUB_ACTIONS", "RUNNER_DEBUG", "ONDEMAND_DEBUG", "ONDEMAND_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_every_interface_command_is_registered_with_real_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert set(cli.commands) >= INTERFACE_COMMANDS
    for name in INTERFACE_COMMANDS:
        code, out, _ = run([name, "--help"], capsys)
        assert code == 0, name
        summary = out.split("\n\n")[1].strip()
        assert len(summary) > 20, f"{name} has no real help text"
        assert "not available" not in summary


def test_global_options_of_the_interface(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for option in ("--config", "--provider", "--name", "--json", "--verbose", "--quiet",
                   "--debug", "--version"):  # fmt: skip
        assert option in out
    for env in ("ONDEMAND_CONFIG", "ONDEMAND_PROVIDER", "ONDEMAND_NAME", "RUNNER_DEBUG"):
        assert env in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert (code, out.strip()) == (0, f"ondemand, version {__version__}")


def test_a_duration_that_is_not_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["reap", "--older-than", "a while", "--dry-run"], capsys)
    assert (code, out) == (2, "")
    assert "--older-than: 'a while' is not a duration" in err
    assert "write e.g. 90s, 30m or 12h" in err
    code, _, err = run(["watchdog", "--once", "--idle", "banana"], capsys)
    assert code == 2
    assert "--idle: 'banana' is not a duration" in err
    code, _, err = run(["down", "--drain-timeout", "banana"], capsys)
    assert code == 2
    assert "--drain-timeout: invalid duration 'banana'" in err


def test_every_command_takes_the_global_options_after_its_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["keys", "new", "--json", "--name", "ci"], capsys)
    assert code == 0
    assert json.loads(out)["name"] == "ci"  # keys new's own --name: the key's
    code, out, _ = run(["config", "--provider", "sandbox", "--name", "late", "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    settings = shown["settings"]
    assert (settings["provider"]["value"], settings["name"]["value"]) == ("sandbox", "late")
    assert run(["status", "--provider", "azure"], capsys)[0] == 2


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["no-such-command"], capsys)[0] == 2
    assert run(["--provider", "azure", "config"], capsys)[0] == 2


def test_keys_new_prints_the_key_once_with_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["keys", "new", "--name", "ci", "--models", "llama3.2,qwen3"], capsys)
    assert code == 0
    key = out.splitlines()[0]
    assert key.startswith("odk_")
    assert out.count(key) == 1
    assert "- name: ci\n  sha256: sha256:" in out
    assert "models: [llama3.2, qwen3]" in out


def test_keys_new_json_and_masking_in_actions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, _ = run(["--json", "keys", "new", "--admin"], capsys)
    assert code == 0
    mask_line, _, payload = out.partition("\n")
    data = json.loads(payload)
    assert mask_line == f"::add-mask::{data['key']}"
    assert data["admin"] is True
    assert data["name"].startswith("admin-")
    import hashlib

    assert data["sha256"] == "sha256:" + hashlib.sha256(data["key"].encode()).hexdigest()


def test_bad_key_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["keys", "new", "--name", "bad name!"], capsys)
    assert code == 2
    assert "invalid key name" in err


def test_config_shows_effective_values_and_their_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "ondemand.yml").write_text("models: [llama3.2]\ntimeout: 10m\n")
    monkeypatch.setenv("ONDEMAND_TIMEOUT", "20m")
    monkeypatch.setenv("ONDEMAND_ADMIN_KEY", "odk_admin_secret_value")
    code, out, _ = run(["--json", "--provider", "ovh", "config"], capsys)
    assert code == 0
    settings = json.loads(out)["settings"]
    assert settings["models"] == {"value": "llama3.2", "source": "ondemand.yml:1"}
    assert settings["timeout"] == {"value": "20m", "source": "env ONDEMAND_TIMEOUT"}
    assert settings["provider"] == {"value": "ovh", "source": "flag --provider"}
    assert settings["admin_key"]["value"] == "***"
    assert "odk_admin_secret_value" not in out


def test_config_errors_exit_2_with_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "ondemand.yml").write_text("name: ok\nmodles: [a]\n")
    code, out, err = run(["config"], capsys)
    assert code == 2
    assert "ondemand.yml:2: unknown key 'modles' — did you mean 'models'?" in err
    assert "Traceback" not in err
    code, out, _ = run(["--json", "config"], capsys)
    assert json.loads(out)["error"]["exit_code"] == 2


def test_errors_become_annotations_in_actions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, _ = run(["watchdog", "--once", "--interval", "soon"], capsys)
    assert code == 2
    assert "::error title=usage error::--interval: 'soon' is not a duration" in out


def test_unexpected_errors_are_short_unless_debug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr("ondemand.keys.mint", broken)
    code, _, err = run(["keys", "new"], capsys)
    assert code == 1
    assert "unexpected RuntimeError: boom" in err
    assert "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "keys", "new"])


def test_python_dash_m_and_help_do_not_import_heavy_modules() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['ondemand', '--help']\n"
        "try:\n    runpy.run_module('ondemand', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('pydantic', 'httpx', 'github', 'aiohttp', 'uvicorn', 'ruamel')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="
