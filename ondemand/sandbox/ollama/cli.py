"""A stand-in ``ollama`` command: ``serve`` runs the emulator; the client commands talk to it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ondemand.errors import UsageError
from ondemand.ollamahost import OllamaHost, parse_ollama_host
from ondemand.sandbox.ollama.config import EmulatorConfig
from ondemand.sandbox.ollama.durations import DurationError, parse_go_duration

USAGE = """Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start the emulated ollama server
  list        List models
  ps          List running models
  show        Show information for a model
  pull        Pull a model
  rm          Remove a model
  stop        Stop a running model
  run         Run a model (non-interactive)

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""
NO_SERVER = "could not connect to ollama server, run 'ollama serve' to start it"


class _Failed(Exception):
    pass


def human_bytes(size: int) -> str:
    """Ollama's format.HumanBytes (decimal units)."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            value = size / factor
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_time(stamp: str, *, future: bool = False) -> str:
    when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")[:26] + "+00:00")
    now = dt.datetime.now(dt.UTC)
    seconds = (when - now).total_seconds() if future else (now - when).total_seconds()
    if future and seconds > 100 * 365 * 86400:
        return "Forever"
    suffix = "from now" if future else "ago"
    if seconds < 1:
        return f"Less than a second {suffix}"
    for limit, text in ((2, "1 second"), (60, f"{int(seconds)} seconds")):
        if seconds < limit:
            return f"{text} {suffix}"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{'About a minute' if minutes == 1 else f'{minutes} minutes'} {suffix}"
    hours = round(seconds / 3600)
    if hours < 48:
        return f"{'About an hour' if hours == 1 else f'{hours} hours'} {suffix}"
    spans = ((24 * 14, "days", 24), (24 * 60, "weeks", 168), (24 * 730, "months", 720))
    for limit, unit, per in spans:
        if hours < limit:
            return f"{hours // per} {unit} {suffix}"
    return f"{int(seconds // (365 * 86400))} years {suffix}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("    ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _ollama_host() -> OllamaHost:
    """As Ollama reads it, including its fallback to the default port on a bad one."""
    return parse_ollama_host(os.environ.get("OLLAMA_HOST", ""))


def _request(method: str, path: str, body: Any = None, *, stream: bool = False) -> httpx.Response:
    base = _ollama_host().url
    try:
        client = httpx.Client(base_url=base, timeout=httpx.Timeout(10.0, read=3600.0))
        request = client.build_request(method, path, json=body)
        response = client.send(request, stream=stream)
    except httpx.TransportError:
        raise _Failed(NO_SERVER) from None
    if response.status_code >= 400:
        response.read()
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise _Failed(str(message))
    return response


def _list() -> None:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in _request("GET", "/api/tags").json()["models"]:
        rows.append(
            [m["name"], m["digest"][:12], human_bytes(m["size"]), human_time(m["modified_at"])]
        )
    print(_table(rows))


def _ps() -> None:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in _request("GET", "/api/ps").json()["models"]:
        on_gpu = m["size_vram"] == m["size"]
        processor = "100% GPU" if on_gpu else "100% CPU" if m["size_vram"] == 0 else "mixed"
        until = human_time(m["expires_at"], future=True)
        size = human_bytes(m["size"])
        rows.append([m["name"], m["digest"][:12], size, processor, str(m["context_length"]), until])
    print(_table(rows))


def _pull(name: str) -> None:
    response = _request("POST", "/api/pull", {"model": name}, stream=True)
    try:
        for line in response.iter_lines():
            if not line:
                continue
            part = json.loads(line)
            if "error" in part:
                raise _Failed(part["error"])
            print(part.get("status", ""), file=sys.stderr)
    finally:
        response.close()


def _keep_alive(flag: str) -> Any:
    try:
        return -1 if parse_go_duration(flag) < 0 else flag
    except DurationError as exc:
        raise _Failed(f'invalid argument "{flag}" for "--keepalive" flag: {exc}') from None


def _run(args: list[str]) -> None:
    keep_alive: Any = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--keepalive"):
            value = arg.split("=", 1)[1] if "=" in arg else args[(i := i + 1)]
            keep_alive = _keep_alive(value)
        else:
            rest.append(arg)
        i += 1
    if not rest:
        raise _Failed("accepts at least 1 arg(s), received 0")
    name, prompt = rest[0], " ".join(rest[1:])
    try:
        info = _request("POST", "/api/show", {"model": name}).json()
    except _Failed as exc:
        if "not found" not in str(exc):
            raise
        _pull(name)
        info = _request("POST", "/api/show", {"model": name}).json()
    extra = {} if keep_alive is None else {"keep_alive": keep_alive}
    if "embedding" in info.get("capabilities", []):
        body = {"model": name, "input": prompt, **extra}
        print(json.dumps(_request("POST", "/api/embed", body).json()["embeddings"]))
        return
    body = {"model": name, "prompt": prompt, "stream": False, **extra}
    answer = _request("POST", "/api/generate", body).json()
    if prompt:
        print(answer.get("response", ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = EmulatorConfig.from_env(os.environ)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command in ("-v", "--version"):
            print(f"ollama version is {config.version}")
        elif command == "serve":
            _serve(config)
        elif command == "list" or command == "ls":
            _list()
        elif command == "ps":
            _ps()
        elif command in ("show", "pull", "rm", "stop") and len(rest) != 1:
            raise _Failed(f"accepts 1 arg(s), received {len(rest)}")
        elif command == "show":
            info = _request("POST", "/api/show", {"model": rest[0]}).json()
            print(json.dumps({k: info[k] for k in ("details", "capabilities")}, indent=2))
        elif command == "pull":
            _pull(rest[0])
        elif command == "rm":
            _request("DELETE", "/api/delete", {"model": rest[0]})
            print(f"deleted '{rest[0]}'")
        elif command == "stop":
            _request("POST", "/api/generate", {"model": rest[0], "keep_alive": 0})
        elif command == "run":
            _run(rest)
        else:
            print(f'Error: unknown command "{command}" for "ollama"\n\n{USAGE}', file=sys.stderr)
            return 1
    except _Failed as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve(config: EmulatorConfig) -> None:
    from ondemand.sandbox.ollama.app import create_app
    from ondemand.serving import bind, run

    where = _ollama_host()
    try:
        sock = bind(where.bind_host, where.port)
    except UsageError as exc:
        raise _Failed(exc.message) from None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    address = f"{where.host}:{where.port}" if where.host else f"[::]:{where.port}"
    print(
        f'time={stamp} level=INFO source=routes.go:1 msg="Listening on {address} '
        f'(version {config.version})" emulator=ollama-ondemand',
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises the stop signal once it has shut down; exit with 0 then, like Ollama.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_cleanly)
    run(create_app(config), sock=sock, graceful_timeout=2.0)


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)
