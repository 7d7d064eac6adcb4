"""A rehearsal on this machine, no GPU and no credentials: ``python -m ondemand.demo``.

Runs the lifecycle a CI job runs, with the ``local`` provider and the built-in Ollama
emulator: ``ondemand up`` (server started, a model pulled, every model warmed), an
authenticated streamed chat through the proxy, the requests the proxy refuses,
``ondemand status`` and ``ondemand down``. Exits non-zero if anything behaves differently
from what it shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ondemand.sandbox.ollama import write_standin

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


def run() -> None:
    _say("ollama-ondemand demo: the CI lifecycle on this machine (local provider, Ollama")
    _say("emulator: no GPU, no credentials)")
    with tempfile.TemporaryDirectory(prefix="ondemand-demo-") as tmp:
        admin_key = json.loads(_ondemand(dict(os.environ), "--json", "keys", "new", "--admin"))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OLLAMA_"))},
            "ONDEMAND_STATE_DIR": tmp,
            "ONDEMAND_NAME": "ondemand-demo",
            "ONDEMAND_MODELS": MODELS,
            "ONDEMAND_ADMIN_KEY": str(admin_key["key"]),
            # The emulator even where a real Ollama is installed: the demo must not download
            # gigabytes of weights.
            "OLLAMA_BIN": str(write_standin(Path(tmp) / "bin")),
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40",
            "OLLAMA_EMULATOR_PULL_SECONDS": "1.5",
            "OLLAMA_EMULATOR_LOAD_TIME": "0.4",
        }
        _say()
        _say(f"[1/5] ondemand up    (models: {MODELS}; qwen3:0.6b is not cached: it is pulled)")
        up = json.loads(_ondemand(env, "--json", "up"))
        url, key = str(up["url"]), str(up["api_key"])
        try:
            _say(f"      OLLAMA_HOST={url}  OLLAMA_API_KEY={_masked(key)}")
            _say("[2/5] An authenticated, streamed chat through the proxy")
            _stream_chat(url, key)
            _say("[3/5] What the proxy refuses")
            _refusals(url, key, str(admin_key["key"]))
            _say("[4/5] ondemand status")
            for line in _ondemand(env, "status").splitlines():
                _say(f"      {line}")
        finally:
            _say("[5/5] ondemand down")
            _say("      " + _ondemand(env, "down").strip())
        try:
            httpx.get(url + "/ping", timeout=2)
        except httpx.HTTPError:
            _say("      /ping no longer answers: nothing is left running")
        else:
            raise DemoFailed("the server still answers after 'ondemand down'")
    _say()
    _say("Done. Next: 'make test', docs/serve.md and docs/proxy.md.")


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
