"""A rehearsal on this machine, no GPU and no credentials: ``python -m ondemand.demo``.

Starts the Ollama emulator and ``ondemand proxy`` as real processes on loopback, mints keys
with ``ondemand keys new``, then shows an authenticated streamed chat and the requests the
proxy refuses. Exits non-zero if anything behaves differently from what it shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import httpx

from ondemand.processes import ProcessFailed, free_port, running

MODELS = "llama3.2,nomic-embed-text=embed"
CHAT_MODEL = "llama3.2"


class DemoFailed(Exception):
    pass


def _masked(key: str) -> str:
    return key[:8] + "…"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _ondemand(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "ondemand", "--json", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, object] = json.loads(out)
    return data


def _expect(response: httpx.Response, status: int, what: str) -> str:
    body = response.text.strip()
    shown = body if len(body) < 110 else body[:107] + "..."
    _say(f"      {what:<32} -> {response.status_code} {shown}")
    if response.status_code != status:
        raise DemoFailed(f"{what}: expected {status}, got {response.status_code}")
    return body


def _stream_chat(proxy: str, key: str) -> None:
    _say(f"      POST /api/chat   Authorization: Bearer {_masked(key)}")
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    started = time.perf_counter()
    first: float | None = None
    final: dict[str, object] = {}
    print("      > ", end="", flush=True)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", proxy + "/api/chat", json=body, headers=headers) as response:
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
    elapsed = time.perf_counter() - started
    _say()
    tokens = final.get("eval_count")
    reason = final.get("done_reason")
    ttft = (first or 0) * 1000
    _say(
        f"      200 · {tokens} tokens streamed as they were generated · first token after "
        f"{ttft:.0f} ms · {elapsed:.2f} s · done_reason={reason}"
    )
    if not tokens or reason != "stop":
        raise DemoFailed("the stream did not end with a final done line")


def run() -> None:
    _say("ollama-ondemand demo: the proxy in front of the Ollama emulator (no GPU, no credentials)")
    _say()
    with tempfile.TemporaryDirectory(prefix="ondemand-demo-") as store:
        emulator_port = free_port()
        upstream = f"http://127.0.0.1:{emulator_port}"
        emulator_env = {
            "OLLAMA_HOST": f"127.0.0.1:{emulator_port}",
            "OLLAMA_MODELS": store,
            "OLLAMA_EMULATOR_MODELS": MODELS,
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40",
            "OLLAMA_EMULATOR_RESPONSE_TOKENS": "24",
        }
        _say(f"[1/5] Ollama emulator   python -m ondemand.sandbox.ollama serve   {upstream}")
        with running(
            [sys.executable, "-m", "ondemand.sandbox.ollama", "serve"],
            env=emulator_env,
            ready_url=upstream,
        ):
            user = _ondemand("keys", "new", "--name", "demo-user")
            admin = _ondemand("keys", "new", "--name", "demo-admin", "--admin")
            user_key, admin_key = str(user["key"]), str(admin["key"])
            _say(
                f"[2/5] Keys              ondemand keys new   user {_masked(user_key)} "
                f"(name demo-user), admin {_masked(admin_key)}"
            )
            proxy_port = free_port()
            proxy = f"http://127.0.0.1:{proxy_port}"
            proxy_env = {"AUTHORIZATION_APIKEY_DEMO": user_key, "ONDEMAND_ADMIN_KEY": admin_key}
            args = [sys.executable, "-m", "ondemand", "proxy", "--upstream", upstream,
                    "--host", "127.0.0.1", "--port", str(proxy_port)]  # fmt: skip
            with running(args, env=proxy_env, ready_url=proxy + "/ping"):
                _say(f"[3/5] Proxy             ondemand proxy --upstream {upstream}   {proxy}")
                _expect(httpx.get(proxy + "/ping"), 200, "GET /ping (no key needed)")
                _say("[4/5] An authenticated, streamed chat")
                _stream_chat(proxy, user_key)
                _say("[5/5] What the proxy refuses")
                _expect(httpx.get(proxy + "/api/tags"), 401, "anonymous GET /api/tags")
                _expect(
                    httpx.get(proxy + "/api/tags", headers={"X-API-Key": "odk_guessed"}),
                    401,
                    "a wrong key",
                )
                pull = {"model": "qwen3:0.6b", "stream": False}
                _expect(
                    httpx.post(proxy + "/api/pull", json=pull, headers={"X-API-Key": user_key}),
                    403,
                    "user key POST /api/pull",
                )
                _expect(
                    httpx.post(proxy + "/api/%70ull", json=pull, headers={"X-API-Key": user_key}),
                    403,
                    "user key POST /api/%70ull",
                )
                _expect(
                    httpx.post(
                        proxy + "/api/pull", json=pull, headers={"X-API-Key": admin_key},
                        timeout=30,
                    ),
                    200,
                    "admin key POST /api/pull",
                )  # fmt: skip
    _say()
    _say("Done: the emulator and the proxy were stopped. Next: 'make test', docs/proxy.md.")


def main() -> None:
    try:
        run()
    except (DemoFailed, ProcessFailed) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
