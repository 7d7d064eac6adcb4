"""The ``local`` provider: ``ondemand serve`` as a background process on this machine.

It runs the same server the image runs, so a workflow rehearses the whole lifecycle on a
laptop or a CPU runner. With a real ``ollama`` (``OLLAMA_BIN`` or PATH) it serves real
models on this machine's CPU or GPU; without one it says so and uses the built-in emulator.

State lives under one directory per deployment name (``ONDEMAND_STATE_DIR``, else
``$RUNNER_TEMP/ondemand``, else the user cache directory):

    local/<name>/deployment.json   what to run (models, server env, port)
    local/<name>/secrets.json      its keys (mode 0600)
    local/<name>/server.json       the running process: pid, port, url, log
    local/<name>/serve.log         the server's log
    local/<name>/models/           the emulator's model store (kept by delete)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ondemand.childenv import OLLAMA, PASS_ENV, SERVER, SYSTEM, allowed, pass_env_names
from ondemand.errors import ConfigError, ProviderError, UsageError
from ondemand.processes import free_port, port_free
from ondemand.providers.base import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Deployment,
    Provider,
    Spec,
    Status,
    env_changes,
)
from ondemand.statedir import state_root

if TYPE_CHECKING:
    from ondemand.config import ResolvedConfig

EMULATOR_NOTE = "no 'ollama' found (OLLAMA_BIN or PATH): using the built-in Ollama emulator"
_STOP_GRACE = 40.0  # the server's drain (25 s) plus time to stop Ollama


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProviderError(
            f"cannot read {path}: {exc}",
            hint=f"remove the directory {path.parent} (or run 'ondemand delete') and retry",
        ) from exc
    return data if isinstance(data, dict) else None


def _write(path: Path, data: Mapping[str, Any], *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # Create with the final permissions, so a key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    tmp.replace(path)


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is alive and is an ``ondemand serve`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # somebody else's process now holds that pid
    try:
        command = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: assume it is, so it is never left running unnoticed
    return "ondemand" in command and "serve" in command


class LocalProvider(Provider):
    """Runs deployments as local background processes (see the module docstring)."""

    name: ClassVar[str] = "local"

    def __init__(self, *, env: Mapping[str, str], config: ResolvedConfig | None = None) -> None:
        # Everything else it needs arrives in the Spec.
        self.pass_env = tuple(config.config.pass_env) if config else pass_env_names(env)
        self.env = env
        self.root = state_root(env) / "local"

    def _dir(self, name: str) -> Path:
        return self.root / name

    # -- the Provider contract ----------------------------------------------------------

    def find(self, name: str) -> Deployment | None:
        deployment = self.status(name)
        return None if deployment.status is Status.ABSENT else deployment

    def list_managed(self) -> list[Deployment]:
        if not self.root.is_dir():
            return []
        names = sorted(p.parent.name for p in self.root.glob("*/deployment.json"))
        return [self.status(name) for name in names]

    def deploy(self, spec: Spec) -> Deployment:
        directory = self._dir(spec.name)
        existing = _read(directory / "deployment.json")
        record = {
            "name": spec.name,
            "models": list(spec.models),
            "env": dict(spec.env),
            "port": spec.port,
            "labels": {**spec.labels, LABEL_MANAGED_BY: MANAGED_BY},
            "created_at": (existing or {}).get("created_at") or _now(),
        }
        _write(directory / "deployment.json", record)
        _write(directory / "secrets.json", dict(spec.secret_env), private=True)
        change = "created" if existing is None else "updated"
        return dataclasses.replace(self.status(spec.name), detail=change)

    def start(self, deployment_id: str) -> Deployment:
        directory = self._dir(deployment_id)
        record = _read(directory / "deployment.json")
        if record is None:
            raise ProviderError(
                f"there is no local deployment named {deployment_id!r}",
                hint="run 'ondemand deploy' or 'ondemand up' first",
            )
        current = self.status(deployment_id)
        if current.status in (Status.RUNNING, Status.STARTING):
            return current  # a second start reuses the running server
        port = int(record.get("port") or 0)
        if port and not port_free(port):
            raise UsageError(
                f"port {port} on 127.0.0.1 is already in use",
                cause="another process listens there (another server, or ollama-ondemand "
                "under another name)",
                hint="set another port (ONDEMAND_PORT or 'port' in ondemand.yml), or stop "
                "that process",
            )
        port = port or free_port()
        secrets = _read(directory / "secrets.json") or {}
        binary, note = self._ollama(directory)
        env = server_environment(self.env, self.pass_env)
        env.update(record.get("env") or {})
        env.update(secrets)
        env.update(
            {
                "OLLAMA_BIN": binary,
                "OLLAMA_PRELOAD_MODELS": ",".join(record.get("models") or []),
                "HOST": "127.0.0.1",
                "PORT": str(port),
                # The machine may already run its own Ollama on 11434.
                "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{free_port()}",
            }
        )
        if note:
            env["OLLAMA_MODELS"] = str(directory / "models")
        log_path = directory / "serve.log"
        pid = _spawn_detached([sys.executable, "-m", "ondemand", "serve"], env, directory, log_path)
        _write(
            directory / "server.json",
            {
                "pid": pid,
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "log": str(log_path),
                "ollama": binary,
                "emulated": bool(note),
                "started_at": _now(),
            },
        )
        deployment = self.status(deployment_id)
        return dataclasses.replace(deployment, detail=note or deployment.detail)

    def stop(self, deployment_id: str) -> Deployment:
        directory = self._dir(deployment_id)
        server = _read(directory / "server.json")
        if server is not None:
            pid = int(server["pid"])
            if _is_our_server(pid):
                _terminate(pid)
            (directory / "server.json").unlink(missing_ok=True)
        return self.status(deployment_id)

    def status(self, deployment_id: str) -> Deployment:
        directory = self._dir(deployment_id)
        record = _read(directory / "deployment.json")
        if record is None:
            return Deployment(id=deployment_id, name=deployment_id, status=Status.ABSENT)
        labels = record.get("labels") or {}
        created = _parse_time(record.get("created_at"))
        server = _read(directory / "server.json")
        if server is None:
            return Deployment(
                id=deployment_id, name=deployment_id, status=Status.STOPPED,
                labels=labels, created_at=created,
            )  # fmt: skip
        pid = int(server["pid"])
        if not _is_our_server(pid):
            (directory / "server.json").unlink(missing_ok=True)
            return Deployment(
                id=deployment_id, name=deployment_id, status=Status.STOPPED,
                labels=labels, created_at=created,
                detail=f"the server (pid {pid}) is gone; its stale state was cleared",
            )  # fmt: skip
        return Deployment(
            id=deployment_id,
            name=deployment_id,
            status=Status.RUNNING,
            vendor_state=f"pid {pid}",
            url=str(server["url"]),
            labels=labels,
            created_at=created,
            running_since=_parse_time(server.get("started_at")),
            detail=EMULATOR_NOTE if server.get("emulated") else None,
        )

    def delete(self, deployment_id: str) -> None:
        self.stop(deployment_id)
        directory = self._dir(deployment_id)
        if not directory.is_dir():
            return
        for child in directory.iterdir():
            if child.name == "models":
                continue  # the model cache survives, as a cloud cache volume does
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- beyond the contract --------------------------------------------------------

    def kept_after_delete(self) -> str:
        return f"its model store under {self.root} is kept"

    def deployed_env(self, deployment_id: str) -> dict[str, str]:
        directory = self._dir(deployment_id)
        record = _read(directory / "deployment.json") or {}
        env = {**(record.get("env") or {}), **(_read(directory / "secrets.json") or {})}
        return {str(k): str(v) for k, v in env.items() if v}

    def spec_changes(self, spec: Spec) -> list[str]:
        directory = self._dir(spec.name)
        record = _read(directory / "deployment.json")
        if record is None:
            return []
        secrets = _read(directory / "secrets.json") or {}
        changes = env_changes(
            {**(record.get("env") or {}), **secrets}, {**spec.env, **spec.secret_env}
        )
        if spec.port and spec.port != record.get("port"):
            changes.append(f"port {record.get('port') or 'any'} -> {spec.port}")
        return changes

    def log_path(self, deployment_id: str) -> Path:
        return self._dir(deployment_id) / "serve.log"

    def log_hint(self, deployment: Deployment) -> str:
        return f"log: {self.log_path(deployment.name)}"

    def log_tail(self, deployment: Deployment) -> str | None:
        try:
            text = self.log_path(deployment.name).read_text(errors="replace")
        except OSError:
            return None
        return "\n".join(text.splitlines()[-12:]) or None

    def _ollama(self, directory: Path) -> tuple[str, str | None]:
        from ondemand.serve.supervisor import resolve_binary

        configured = self.env.get("OLLAMA_BIN", "").strip()
        binary = resolve_binary(self.env)
        if binary is not None:
            return binary, None
        if configured:
            raise ConfigError(
                f"OLLAMA_BIN={configured} is not an executable",
                hint="point OLLAMA_BIN at the ollama binary, or unset it to use the emulator",
            )
        from ondemand.sandbox.ollama import write_standin

        return str(write_standin(directory / "bin")), EMULATOR_NOTE


# The caller's credentials: the server gets the keys of its deployment (secrets.json) and
# nothing of the command that started it. OLLAMA_API_KEY is the client key `up` exported.
_CALLER_CREDENTIALS = frozenset(
    {
        "ONDEMAND_API_KEY", "ONDEMAND_GITHUB_TOKEN", "GITHUB_TOKEN", "OVH_AI_TOKEN",
        "RUNPOD_API_KEY", "RUNPOD_CLIENT_KEY", "ONDEMAND_SANDBOX_TOKEN",
        "ONDEMAND_SANDBOX_READ_TOKEN", "OLLAMA_API_KEY", "OPENAI_API_KEY",
    }
)  # fmt: skip


def server_environment(env: Mapping[str, str], pass_env: tuple[str, ...]) -> dict[str, str]:
    """What the server gets of the caller's environment: what it and Ollama read
    (ondemand/childenv.py) and what the user named, never the caller's credentials."""
    chosen = allowed(env, (*SYSTEM, *OLLAMA, *SERVER, *pass_env))
    out = {k: v for k, v in chosen.items() if not _ours(k) and k not in _CALLER_CREDENTIALS}
    if pass_env:
        # The server hands the same names on to Ollama.
        out[PASS_ENV] = ",".join(pass_env)
    return out


def _ours(name: str) -> bool:
    """Variables of this command that must not leak into the server's configuration."""
    return name.startswith(("AUTHORIZATION_APIKEY", "PRELOAD_MODEL_")) or name in {
        "ONDEMAND_ADMIN_KEY", "ONDEMAND_KEYS_FILE", "ONDEMAND_BASIC_AUTH", "OLLAMA_HOST",
        "OLLAMA_PRELOAD_MODELS", "PORT", "PORT_HEALTH", "HOST", "ONDEMAND_INSECURE_NO_AUTH",
        # down's wait for requests in flight, not the server's own on SIGTERM.
        "ONDEMAND_DRAIN_TIMEOUT",
    }  # fmt: skip


# A short-lived middle process starts the server in a session of its own and exits at
# once: the server is then nobody's child here, so it outlives this command (and a Ctrl-C
# in its terminal) and leaves nothing for this process to reap.
_LAUNCHER = """
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    server = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                              start_new_session=True)
print(server.pid)
"""


def _spawn_detached(args: list[str], env: Mapping[str, str], cwd: Path, log: Path) -> int:
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log), *args],
        env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if launched.returncode != 0 or not launched.stdout.strip().isdigit():
        raise ProviderError(
            "could not start the local server",
            cause=launched.stderr.strip()[-1000:] or f"launcher exit status {launched.returncode}",
        )
    return int(launched.stdout.strip())


def _terminate(pid: int) -> None:
    """SIGTERM the server's process group (it drains and stops Ollama), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    while time.monotonic() < deadline:
        if not _is_our_server(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
