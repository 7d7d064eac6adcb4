"""The server image's contract, read from ``image/Dockerfile`` (no Docker engine needed).

The healthcheck's Python is run for real, against a local HTTP server, because a typo in a
one-liner inside JSON inside a Dockerfile would otherwise surface only on a GPU cloud.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ondemand import __version__

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "image" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def only(steps: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for name, arguments in steps if name == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in steps:
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def labels_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name, arguments in steps:
        if name == "LABEL":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                labels[key] = value
    return labels


def args_of(steps: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for name, arguments in steps:
        if name == "ARG":
            key, eq, value = arguments.partition("=")
            found.append((key, value if eq else None))
    return found


# -- base, entrypoint, ports ------------------------------------------------------------


def test_the_base_is_the_official_ollama_image_pinned_by_a_version_arg(
    steps: list[tuple[str, str]],
) -> None:
    assert steps[0][0] == "ARG", "the version ARG must come before FROM to be usable in it"
    key, _, version = steps[0][1].partition("=")
    assert key == "OLLAMA_VERSION"
    assert version.count(".") == 2
    assert all(part.isdigit() for part in version.split("."))
    assert only(steps, "FROM") == "ollama/ollama:${OLLAMA_VERSION}"


def test_entrypoint_is_exactly_ondemand_serve_with_no_stray_arguments(
    steps: list[tuple[str, str]],
) -> None:
    assert json.loads(only(steps, "ENTRYPOINT")) == ["ondemand", "serve"]
    # The base image's CMD ["serve"] would otherwise be appended.
    assert json.loads(only(steps, "CMD")) == []
    assert only(steps, "EXPOSE") == "8080"


def test_environment(steps: list[tuple[str, str]]) -> None:
    env = env_of(steps)
    # Ollama must be reachable only through the authenticating proxy.
    assert env["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env["OLLAMA_MODELS"] == "/var/lib/ollama"
    assert env["PORT"] == "8080"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/ondemand/bin:")
    assert "PORT_HEALTH" not in env


def test_python_and_the_package_are_installed_the_quiet_way(
    steps: list[tuple[str, str]],
) -> None:
    runs = [arguments for name, arguments in steps if name == "RUN"]
    apt = next(run for run in runs if "apt-get install" in run)
    assert "--no-install-recommends" in apt
    assert "python3-venv" in apt
    assert "rm -rf /var/lib/apt/lists/*" in apt
    pips = [run for run in runs if "pip install" in run]
    assert pips
    assert all("--no-cache-dir" in run for run in pips)
    assert any("python3 -m venv /opt/ondemand" in run for run in runs)
    assert any("[server]" in run for run in pips)


def test_only_what_the_dockerignore_lets_in_is_copied(steps: list[tuple[str, str]]) -> None:
    allowed = {"pyproject.toml", "README.md", "ondemand/"}
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    assert {line[1:] for line in ignore if line.startswith("!")} == allowed
    sources = [shlex.split(arguments)[:-1] for name, arguments in steps if name == "COPY"]
    assert {source for copy in sources for source in copy} == allowed
    for source in allowed:
        assert (ROOT / source).exists()


def test_labels(steps: list[tuple[str, str]]) -> None:
    labels = labels_of(steps)
    for key in ("title", "description", "source", "licenses", "version"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.version"] == "${ONDEMAND_VERSION}"
    assert labels["ollama-ondemand.ollama-version"] == "${OLLAMA_VERSION}"
    # The image's version label follows the package's version.
    assert ("ONDEMAND_VERSION", __version__) in args_of(steps)


# -- healthcheck ------------------------------------------------------------------------


def healthcheck(steps: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The HEALTHCHECK's options and its exec-form command."""
    arguments = only(steps, "HEALTHCHECK")
    options, _, command = arguments.partition(" CMD ")
    return options.split(), json.loads(command)


def test_healthcheck_is_exec_form_python_with_sensible_timing(
    steps: list[tuple[str, str]],
) -> None:
    options, command = healthcheck(steps)
    assert command[:2] == ["/opt/ondemand/bin/python3", "-c"]
    assert len(command) == 3
    timing = dict(option.removeprefix("--").split("=") for option in options)
    assert set(timing) == {"interval", "timeout", "start-period", "retries"}
    seconds = {key: int(value.removesuffix("s")) for key, value in timing.items()}
    assert seconds["timeout"] < seconds["interval"]
    assert seconds["retries"] >= 2


class PingHandler(BaseHTTPRequestHandler):
    status = 200
    port = 0

    def do_GET(self) -> None:
        if self.path != "/ping":
            self.send_error(404)
            return
        self.send_response(self.status)
        if self.status == 204:
            self.end_headers()
            return
        body = b"ok" if self.status == 200 else b"unhealthy"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ping_server() -> Iterator[type[PingHandler]]:
    """A /ping on loopback; set ``.status`` and ``.port`` on the yielded class."""

    class Handler(PingHandler):
        pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def probe(snippet: str, **env: str) -> int:
    base = {k: v for k, v in os.environ.items() if k not in ("PORT", "PORT_HEALTH")}
    # A proxy in the container's environment must not reroute the loopback probe.
    base.update(HTTP_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    base.pop("NO_PROXY", None)
    base.pop("no_proxy", None)
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        env={**base, **env},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (204, True), (503, False)])
def test_healthcheck_snippet_accepts_200_and_204_and_fails_otherwise(
    status: int, healthy: bool, steps: list[tuple[str, str]], ping_server: type[PingHandler]
) -> None:
    snippet = healthcheck(steps)[1][2]
    ping_server.status = status
    port = str(ping_server.port)
    assert probe(snippet, PORT=port) == (0 if healthy else 1)


def test_healthcheck_prefers_port_health_and_fails_when_nothing_listens(
    steps: list[tuple[str, str]], ping_server: type[PingHandler]
) -> None:
    snippet = healthcheck(steps)[1][2]
    port = str(ping_server.port)
    with closed_port() as closed:
        assert probe(snippet, PORT=closed, PORT_HEALTH=port) == 0
        assert probe(snippet, PORT=port, PORT_HEALTH=closed) == 1
        assert probe(snippet, PORT=closed) == 1


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """A loopback port with nothing listening, for as long as the block runs."""
    with socket.socket() as sock:
        # Bound but not listening: connections are refused, and no one else can take it.
        sock.bind(("127.0.0.1", 0))
        yield str(sock.getsockname()[1])


# -- linters ----------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    # The dev extra installs it next to this Python; a system one is fine too.
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def test_hadolint_is_clean() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings it)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
