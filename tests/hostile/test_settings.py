"""Keys made of whitespace, from outside: `ondemand serve` and `ondemand proxy` started as the
docs start them refuse a key variable (or keys-file entry) that is blank or has whitespace
around it, name where it came from, never print it, and never make such a key an admin.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ondemand.processes import free_port
from ondemand.sandbox.ollama.standin import write_standin
from tests.cloud import stop_group
from tests.proxy.rawhttp import raw_request

KEY = "odk_" + "k" * 40
SECRET = "hunter2-do-not-print"
# The variable to spoil, and the others it needs to mean anything.
KEY_VARS: dict[str, dict[str, str]] = {
    "ONDEMAND_ADMIN_KEY": {},
    "AUTHORIZATION_APIKEY": {},
    "AUTHORIZATION_APIKEY_CI": {},
    "ONDEMAND_BASIC_AUTH": {},
    "OVHAI_BASIC_AUTH_USER": {"OVHAI_BASIC_AUTH_PASSWORD": "p" * 20},
    "OVHAI_BASIC_AUTH_PASSWORD": {"OVHAI_BASIC_AUTH_USER": "ovh"},
    "ONDEMAND_RUN_KEY_SECRET": {},
    "USER_MODEL_METRICS_WEBHOOK_API_KEY": {"USER_MODEL_METRICS_WEBHOOK_URL": "http://127.0.0.1:9/"},
}
BLANKS = ["\n", " \t"]
PADDED = [f"user:{SECRET}\n", f" user:{SECRET}"]


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


Start = Callable[..., Started]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start `ondemand serve` (the emulator as its ollama) or `ondemand proxy`."""
    started: list[Started] = []
    standin = write_standin(tmp_path / "bin")

    def run(command: str, **env: str) -> Started:
        port = free_port()
        ours = ("AUTHORIZATION_", "ONDEMAND_", "OLLAMA_", "PRELOAD_", "OVHAI_", "USER_MODEL_")
        full = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        full |= {"HOST": "127.0.0.1", "PORT": str(port)}
        if command == "serve":
            full |= {
                "OLLAMA_BIN": str(standin),
                "OLLAMA_MODELS": str(tmp_path / "models"),
                "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{free_port()}",
                "OLLAMA_PRELOAD_MODELS": "",
            }
        full |= env
        log = tmp_path / f"{command}-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ondemand", command],
                env=full,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        one = Started(proc, port, log)
        started.append(one)
        return one

    yield run
    for one in started:
        stop_group(one.proc)


def exits(one: Started, within: float = 30.0) -> int | None:
    """The exit status, or None when it is serving (it answers on its port) instead."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = one.proc.poll()
        if status is not None:
            return status
        with contextlib.suppress(OSError):
            raw_request(one.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
            return None
        time.sleep(0.05)
    return one.proc.poll()


def assert_refused(one: Started, *names: str) -> None:
    status = exits(one)
    output = one.output()
    assert status not in (None, 0), f"the server started:\n{output}"
    for name in names:
        assert name in output, output
    assert SECRET not in output, output
    assert "Traceback" not in output, output


def spoiled(var: str, value: str) -> dict[str, str]:
    env = {"AUTHORIZATION_APIKEY": KEY, **KEY_VARS[var]}
    env[var] = f"user:{value}" if var == "ONDEMAND_BASIC_AUTH" and value in BLANKS else value
    return env


@pytest.mark.parametrize("command", ["serve", "proxy"])
@pytest.mark.parametrize("value", BLANKS)
@pytest.mark.parametrize("var", list(KEY_VARS))
def test_a_blank_key_variable_stops_the_server(
    start: Start, command: str, var: str, value: str
) -> None:
    assert_refused(start(command, **spoiled(var, value)), var)


@pytest.mark.parametrize("command", ["serve", "proxy"])
@pytest.mark.parametrize("value", PADDED)
@pytest.mark.parametrize("var", ["ONDEMAND_ADMIN_KEY", "ONDEMAND_BASIC_AUTH"])
def test_a_key_with_whitespace_around_it_is_refused_and_not_printed(
    start: Start, command: str, var: str, value: str
) -> None:
    assert_refused(start(command, **spoiled(var, value)), var)


def basic(password: str) -> bytes:
    token = base64.b64encode(f"anyone:{password}".encode()).decode()
    return f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()


@pytest.mark.parametrize("command", ["serve", "proxy"])
@pytest.mark.parametrize("value", BLANKS)
def test_basic_auth_with_a_whitespace_password_is_never_admin(
    start: Start, command: str, value: str
) -> None:
    """The report: ONDEMAND_ADMIN_KEY=$'\\n' made Basic auth with password '\\n' an admin."""
    one = start(command, AUTHORIZATION_APIKEY=KEY, ONDEMAND_ADMIN_KEY=value)
    if exits(one) is None:
        answer = raw_request(one.port, basic(value))
        assert answer.status == 401, answer.body
    assert_refused(one, "ONDEMAND_ADMIN_KEY")


def test_whitespace_passwords_are_refused_by_a_healthy_server(start: Start) -> None:
    one = start("proxy", AUTHORIZATION_APIKEY=KEY, ONDEMAND_ADMIN_KEY="admin-" + KEY)
    assert exits(one) is None, one.output()
    for value in [*BLANKS, "", " \n ", "\r\n"]:
        assert raw_request(one.port, basic(value)).status == 401
    assert raw_request(one.port, basic("admin-" + KEY)).status == 200


@pytest.mark.parametrize("command", ["serve", "proxy"])
@pytest.mark.parametrize(
    "key", ['"   "', '"\\n"', f'"{SECRET}\\n"', f'" {SECRET}"', f"|\n    {SECRET}\n"]
)
def test_the_keys_file_follows_the_same_rule(
    start: Start, tmp_path: Path, command: str, key: str
) -> None:
    keys = tmp_path / "keys.yml"
    keys.write_text(f"- name: ci\n  sha256: sha256:{'a' * 64}\n- name: ops\n  key: {key}\n")
    one = start(command, ONDEMAND_KEYS_FILE=str(keys))
    # The file and the line of the 'key:' field, never its content.
    assert_refused(one, f"{keys}:4", "'key'")
