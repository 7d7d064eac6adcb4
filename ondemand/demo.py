"""A rehearsal on this machine, no GPU and no credentials: ``python -m ondemand.demo``.

Runs the lifecycle a CI job runs on OVHcloud AI Deploy against ``ondemand sandbox``, the
emulated cloud (its AI API starts real ``ondemand serve`` processes with an emulated
Ollama): ``deploy``, ``up`` (app started, a model pulled, every model warmed), an
authenticated streamed chat through the app's URL, the requests the proxy refuses,
``status``, ``down`` and ``delete``. Exits non-zero if anything behaves differently from
what it shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

MODELS = "llama3.2,qwen3:0.6b"
CHAT_MODEL = "llama3.2"


class DemoFailed(Exception):
    pass


def _masked(key: str) -> str:
    return key[:8] + "…"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _ondemand(env: dict[str, str], *args: str, show_stderr: bool = True) -> str:
    """Run the CLI as a user would; its progress (stderr) goes straight to the terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "ondemand", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if show_stderr else subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DemoFailed(f"'ondemand {' '.join(args)}' exited with {result.returncode}")
    return result.stdout


def _expect(response: httpx.Response, status: int, what: str) -> None:
    body = response.text.strip()
    shown = body if len(body) < 90 else body[:87] + "..."
    _say(f"      {what:<28} -> {response.status_code} {shown}")
    if response.status_code != status:
        raise DemoFailed(f"{what}: expected {status}, got {response.status_code}")


def _stream_chat(url: str, key: str) -> None:
    _say(f"      POST {url}/api/chat   Authorization: Bearer {_masked(key)}")
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    started = time.perf_counter()
    first: float | None = None
    final: dict[str, object] = {}
    print("      > ", end="", flush=True)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", url + "/api/chat", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise DemoFailed(f"streamed chat answered {response.status_code}")
        for line in response.iter_lines():
            if not line:
                continue
            part = json.loads(line)
            if first is None:
                first = time.perf_counter() - started
            if part.get("done"):
                final = part
            else:
                print(part["message"]["content"], end="", flush=True)
    _say()
    tokens, reason = final.get("eval_count"), final.get("done_reason")
    _say(
        f"      200 · {tokens} tokens streamed as they were generated · first token after "
        f"{(first or 0) * 1000:.0f} ms · {time.perf_counter() - started:.2f} s · "
        f"done_reason={reason}"
    )
    if not tokens or reason != "stop":
        raise DemoFailed("the stream did not end with a final done line")


def _refusals(url: str, user_key: str, admin_key: str) -> None:
    pull = {"model": "nomic-embed-text", "stream": False}
    _expect(httpx.get(url + "/api/tags"), 401, "anonymous GET /api/tags")
    _expect(httpx.get(url + "/api/tags", headers={"X-API-Key": "odk_guess"}), 401, "a wrong key")
    user = {"X-API-Key": user_key}
    _expect(httpx.post(url + "/api/pull", json=pull, headers=user), 403, "user key POST /api/pull")
    _expect(httpx.post(url + "/api/%70ull", json=pull, headers=user), 403,
            "user key POST /api/%70ull")  # fmt: skip
    admin = {"X-API-Key": admin_key}
    _expect(httpx.post(url + "/api/pull", json=pull, headers=admin, timeout=30), 200,
            "admin key POST /api/pull")  # fmt: skip


@contextlib.contextmanager
def _sandbox(env: dict[str, str], state: Path) -> Iterator[dict[str, str]]:
    """``ondemand sandbox`` in the background; yields the variables it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand", "sandbox", "--state-dir", str(state)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed: dict[str, str] = {}
        while len(printed) < 4:
            line = proc.stdout.readline()
            if not line:
                raise DemoFailed(f"'ondemand sandbox' exited with {proc.wait()}")
            name, _, value = line.strip().partition("=")
            printed[name] = value
        yield printed
    finally:
        proc.terminate()
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    if code != 0:
        raise DemoFailed(f"the sandbox exited with {code} when stopped")


def run() -> None:
    _say("ollama-ondemand demo: the CI lifecycle on OVHcloud AI Deploy, rehearsed against the")
    _say("sandbox cloud on this machine (emulated AI API and Ollama: no GPU, no credentials)")
    with tempfile.TemporaryDirectory(prefix="ondemand-demo-") as tmp:
        admin_key = json.loads(_ondemand(dict(os.environ), "--json", "keys", "new", "--admin"))
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ONDEMAND_", "OLLAMA_", "OVH_", "OPENAI_"))
        }
        emulated = {
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40",
            "OLLAMA_EMULATOR_PULL_SECONDS": "1.5",
            "OLLAMA_EMULATOR_LOAD_TIME": "0.4",
        }
        with _sandbox({**clean, **emulated}, Path(tmp) / "sandbox") as cloud:
            env = {
                **clean,
                "ONDEMAND_SANDBOX_URL": cloud["ONDEMAND_SANDBOX_URL"],
                "ONDEMAND_PROVIDER": "sandbox",
                "ONDEMAND_NAME": "ondemand-demo",
                "ONDEMAND_MODELS": MODELS,
                "ONDEMAND_ADMIN_KEY": str(admin_key["key"]),
                "ONDEMAND_TIMEOUT": "2m",
            }
            _say(f"      sandbox: OVH AI API at {cloud['OVH_AI_API_URL']}")
            _lifecycle(env, str(admin_key["key"]))
    _say()
    _say("Done. Next: 'make test'; docs/ovh.md for the real cloud, docs/sandbox.md for faults.")


def _lifecycle(env: dict[str, str], admin_key: str) -> None:
    _say()
    _say("[1/7] ondemand deploy   (creates the app; a new app starts, so deploy stops it again)")
    _say("      " + _ondemand(env, "deploy").strip())
    _say(f"[2/7] ondemand up       (models: {MODELS}; qwen3:0.6b is not cached: it is pulled)")
    up = json.loads(_ondemand(env, "--json", "up"))
    url, key = str(up["url"]), str(up["api_key"])
    try:
        _say(f"      OLLAMA_HOST={url}  OLLAMA_API_KEY={_masked(key)}")
        _say("[3/7] An authenticated, streamed chat through the app's URL")
        _stream_chat(url, key)
        _say("[4/7] What the proxy refuses")
        _refusals(url, key, admin_key)
        _say("[5/7] ondemand status")
        for line in _ondemand(env, "status").splitlines():
            _say(f"      {line}")
    finally:
        _say("[6/7] ondemand down")
        _say("      " + _ondemand(env, "down").strip())
    try:
        httpx.get(url + "/ping", timeout=2)
    except httpx.HTTPError:
        _say("      /ping no longer answers: the app is stopped, nothing bills")
    else:
        raise DemoFailed("the app still answers after 'ondemand down'")
    _say("[7/7] ondemand delete")
    _say("      " + _ondemand(env, "delete").strip())
    gone = json.loads(_ondemand(env, "--json", "status"))
    if gone["status"] != "absent":
        raise DemoFailed(f"after 'ondemand delete' the app is {gone['status']}")
    _say("      status: absent")


def main() -> None:
    try:
        run()
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
