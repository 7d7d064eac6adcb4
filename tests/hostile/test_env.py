"""What reaches whom: the caller's environment is not handed on to the local server or its
Ollama beyond what they read, the action's venv runs nothing planted by an earlier step
with the job's secrets in reach, and masks reach the runner exactly as the secret."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ondemand.gha import Actions
from ondemand.serve.supervisor import child_environment
from tests.actionrunner import ROOT, Runner, install_standin, unescape_data
from tests.clirun import run
from tests.providers.test_local import state  # noqa: F401 (the fixture)

# Values a developer's shell or a CI job holds that are nobody's business but theirs.
CALLER_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0123456789abcdef",
    "HF_TOKEN": "hf_caller_token_0123456789",
    "DATABASE_PASSWORD": "db-password-0123456789",
    "OLLAMA_API_KEY": "odk_client_key_of_an_earlier_up",
    "GITHUB_TOKEN": "ghs_caller_token_0123456789",
}
PASSED = ("MY_APP_SETTING", "passed-through-value")


# -- item 7: the local provider's server and its Ollama ----------------------------------


@pytest.fixture
def local(state: Path) -> Path:  # noqa: F811
    """The local provider's state, in a clean environment (the local provider's tests' own
    fixture: no real Ollama on PATH, none of the machine's keys)."""
    return state


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_the_local_server_and_its_ollama_get_no_secret_of_the_caller(
    local: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CALLER_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(PASSED[0], PASSED[1])
    monkeypatch.setenv("ONDEMAND_PASS_ENV", "MY_APP_*")
    code, out, err = run(["up"], capsys)
    assert code == 0, err
    key = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)["OLLAMA_API_KEY"]
    server = json.loads((local / "ollama-ondemand" / "server.json").read_text())["pid"]
    processes = [server, *_descendants(server)]
    ollama = [pid for pid in processes if "ondemand.sandbox.ollama" in _cmdline(pid)]
    assert ollama, [_cmdline(pid) for pid in processes]
    for pid in processes:
        environ = _environ(pid)
        leaked = sorted(n for n, v in CALLER_SECRETS.items() if v in environ.values())
        assert leaked == [], f"{_cmdline(pid)} got {leaked}"
        assert environ.get(PASSED[0]) == PASSED[1], _cmdline(pid)
        assert "OLLAMA_EMULATOR_LOAD_TIME" in environ  # Ollama's own settings still pass
    assert _environ(server)["AUTHORIZATION_APIKEY"]  # the server has the deployment's key
    for pid in ollama:  # ... which its Ollama never sees
        assert not [n for n, v in _environ(pid).items() if key in v or n.startswith("AUTHOR")]
    assert run(["down"], capsys)[0] == 0


def test_serve_hands_ollama_only_what_ollama_reads_and_the_names_passed() -> None:
    env = {
        **CALLER_SECRETS, PASSED[0]: PASSED[1], "ONDEMAND_PASS_ENV": "MY_APP_*, HF_TOKEN",
        "AUTHORIZATION_APIKEY": "odk_user", "ONDEMAND_ADMIN_KEY": "odk_admin",
        "USER_MODEL_METRICS_WEBHOOK_API_KEY": "whk", "ONDEMAND_MAX_BODY": "1MiB",
        "PATH": "/usr/bin", "HOME": "/home/ondemand", "LC_ALL": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128", "CUDA_VISIBLE_DEVICES": "0",
        "HIP_VISIBLE_DEVICES": "1", "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64",
        "OLLAMA_MODELS": "/var/lib/ollama", "OLLAMA_FLASH_ATTENTION": "1",
    }  # fmt: skip
    child = child_environment(env, 11434)
    assert set(child) == {
        PASSED[0], "HF_TOKEN", "PATH", "HOME", "LC_ALL", "HTTPS_PROXY", "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "OLLAMA_MODELS", "OLLAMA_FLASH_ATTENTION",
        "OLLAMA_HOST",
    }  # fmt: skip
    # Named or not, a key of ours never reaches Ollama.
    env["ONDEMAND_PASS_ENV"] = "*"
    assert not {"AUTHORIZATION_APIKEY", "ONDEMAND_ADMIN_KEY", "OLLAMA_API_KEY"} & set(
        child_environment(env, 11434)
    )


def test_pass_env_from_the_file_reaches_the_server_and_is_handed_on(tmp_path: Path) -> None:
    from ondemand.config import load_config
    from ondemand.errors import ConfigError
    from ondemand.providers.local import LocalProvider, server_environment

    (tmp_path / "ondemand.yml").write_text("pass_env: [MY_APP_*, AWS_REGION]\n")
    resolved = load_config(path=None, env={}, cwd=tmp_path)
    provider = LocalProvider(env={}, config=resolved)
    assert provider.pass_env == ("MY_APP_*", "AWS_REGION")
    caller = {**CALLER_SECRETS, PASSED[0]: PASSED[1], "AWS_REGION": "eu-west-3"}
    env = server_environment(caller, provider.pass_env)
    assert env == {
        PASSED[0]: PASSED[1], "AWS_REGION": "eu-west-3", "ONDEMAND_PASS_ENV": "MY_APP_*,AWS_REGION"
    }  # fmt: skip
    with pytest.raises(ConfigError, match="ONDEMAND_PASS_ENV: each entry must be"):
        load_config(path=None, env={"ONDEMAND_PASS_ENV": "MY-APP"}, cwd=tmp_path)


# -- item 8: the action's venv and its masks ---------------------------------------------

ADMIN_KEY = "odk_admin_key_of_the_job_0123"


@pytest.fixture
def job(tmp_path: Path) -> Runner:
    temp = tmp_path / "runner-temp"
    install_standin(temp)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "ONDEMAND_STATE_DIR": str(tmp_path / "state"),
        # A rebuild in a test must fail at once, not reach a package index.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "UV_OFFLINE": "1",
    }
    return Runner(
        temp=temp, env=env, uses={"actions/setup-python": lambda _: {"python-path": sys.executable}}
    )


STATUS = {"command": "status", "provider": "local", "admin-key": ADMIN_KEY}
_CAPTURE = "import os; open({path!r}, 'w').write(repr(dict(os.environ)))\n"


def _captured(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_the_action_runs_its_own_venv_as_installed(job: Runner) -> None:
    """The same venv is reused, checked: it runs with the job's secrets."""
    run = job.run(STATUS)
    assert run.code == 0, run.log
    assert "every file checked" in run.steps[1].stdout


def test_a_pth_planted_in_the_venv_never_runs_with_the_secrets(job: Runner, tmp_path: Path) -> None:
    venv = job.temp / "ollama-ondemand" / "venv"
    capture = tmp_path / "captured"
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "zz_planted.pth").write_text(_CAPTURE.format(path=str(capture)))
    run = job.run(STATUS)
    assert ADMIN_KEY not in _captured(capture)
    assert "zz_planted.pth: not installed by the action" in run.log
    assert not (site / "zz_planted.pth").exists()


def test_a_changed_module_in_the_venv_is_refused(job: Runner, tmp_path: Path) -> None:
    venv = job.temp / "ollama-ondemand" / "venv"
    capture = tmp_path / "captured"
    shim = next(venv.glob("lib/python*/site-packages/ondemand_test_standin.pth"))
    shim.write_text(shim.read_text() + _CAPTURE.format(path=str(capture)))
    run = job.run(STATUS)
    assert ADMIN_KEY not in _captured(capture)
    assert "ondemand_test_standin.pth: changed since it was installed" in run.log


def test_pythonpath_set_by_an_earlier_step_is_ignored(job: Runner, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    capture = tmp_path / "captured"
    (planted / "sitecustomize.py").write_text(_CAPTURE.format(path=str(capture)))
    job.exported["PYTHONPATH"] = str(planted)  # what `echo PYTHONPATH=... >> $GITHUB_ENV` does
    run = job.run(STATUS)
    assert run.code == 0, run.log
    assert ADMIN_KEY not in _captured(capture)


def test_the_check_passes_a_real_venv_drops_new_bytecode_and_names_what_was_planted(
    tmp_path: Path,
) -> None:
    """A venv with pip in it, as `python -m venv` makes it (bytecode compiled), recorded."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    script = [sys.executable, "-I", "-S", "-B", str(ROOT / "action" / "verify_venv.py")]
    subprocess.run([*script, "record", str(venv)], check=True)

    def check() -> tuple[int, list[str]]:
        done = subprocess.run([*script, "check", str(venv)], capture_output=True, text=True)
        return done.returncode, done.stdout.splitlines()

    assert check() == (0, [])
    site = next(venv.glob("lib/python*/site-packages"))
    compiled = next(site.glob("pip/__pycache__/__init__.*.pyc"))
    written_later = compiled.with_name("written_later.cpython-3.pyc")
    written_later.write_bytes(b"bytecode written after the install")
    assert check() == (0, [])
    assert not written_later.exists()
    (site / "planted.py").write_text("")
    compiled.write_bytes(b"a forged header and code")
    rel = site.relative_to(venv)
    assert check() == (
        1,
        [
            f"{rel}/pip/__pycache__/{compiled.name}: changed since it was installed",
            f"{rel}/planted.py: not installed by the action",
        ],
    )


# A secret with every character the runner unescapes, and lines ended by CRLF, CR and LF.
TRICKY = "odk_first%0Aline%25\r\nsecond%line\rthird-line\n"
TRICKY_PARTS = {TRICKY, "odk_first%0Aline%25", "second%line", "third-line"}


def test_shell_masks_reach_the_runner_as_the_secret(job: Runner) -> None:
    run = job.run({**STATUS, "admin-key": TRICKY})
    assert set(run.masks) >= TRICKY_PARTS
    assert "\r" not in run.steps[2].stdout  # a raw CR would end the runner's line early


def test_an_input_cannot_start_a_workflow_command_of_its_own(job: Runner) -> None:
    run = job.run({"command": "nope\n::warning::injected"})
    assert run.code == 2
    assert not [line for line in run.log.split("\n") if line.startswith("::warning::")]


def test_python_masks_reach_the_runner_as_the_secret() -> None:
    out = io.StringIO()
    Actions({"GITHUB_ACTIONS": "true"}, stdout=out).mask(TRICKY)
    lines = out.getvalue().split("\n")
    masks = {unescape_data(line.removeprefix("::add-mask::")) for line in lines if line}
    assert masks == TRICKY_PARTS
    assert not any("\r" in line for line in lines)


def test_escaped_text_round_trips_through_the_runners_unescape() -> None:
    from ondemand.gha import escape_data

    for text in (TRICKY, "%250A", "%%0D0A", "100%\r", "\n%25\n"):
        assert unescape_data(escape_data(text)) == text
        script = f'source "{ROOT}/action/workflow-commands.sh"; escape_data "$1"'
        shell = subprocess.run(
            ["bash", "-c", script, "-", text], capture_output=True, text=True, check=True
        )
        assert re.fullmatch(r"[^\r\n]*", shell.stdout)
        assert unescape_data(shell.stdout) == text
