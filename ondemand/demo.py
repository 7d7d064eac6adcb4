"""A rehearsal on this machine, no GPU and no credentials: ``python -m ondemand.demo``.

Runs the lifecycle a CI job runs against ``ondemand sandbox``, the emulated cloud (its
APIs start real ``ondemand serve`` processes with an emulated Ollama): ``deploy``, ``up``
(started, a model pulled, every model warmed), an authenticated streamed chat through the
deployment's URL, the requests the proxy refuses, ``status``, ``down`` and ``delete``. On
OVH by default; ``--provider runpod`` (or ``runpod-pod``, ``ovh``) rehearses another
provider. Exits non-zero if anything behaves differently from what it shows.
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

from ondemand.sandbox.background import SandboxExited, background_sandbox

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


def _stream_chat(url: str, key: str, gateway: dict[str, str]) -> None:
    how = "X-API-Key" if gateway else "Authorization: Bearer"
    _say(f"      POST {url}/api/chat   {how} {_masked(key)}")
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    started = time.perf_counter()
    first: float | None = None
    final: dict[str, object] = {}
    print("      > ", end="", flush=True)
    # Behind RunPod's gateway, Authorization carries the RunPod key and ours is X-API-Key.
    headers = {**gateway, "X-API-Key": key} if gateway else {"Authorization": f"Bearer {key}"}
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


def _refusals(url: str, user_key: str, admin_key: str, gateway: dict[str, str]) -> None:
    pull = {"model": "nomic-embed-text", "stream": False}
    _expect(httpx.get(url + "/api/tags", headers=gateway), 401, "anonymous GET /api/tags")
    wrong = {**gateway, "X-API-Key": "odk_guess"}
    _expect(httpx.get(url + "/api/tags", headers=wrong), 401, "a wrong key")
    user = {**gateway, "X-API-Key": user_key}
    _expect(httpx.post(url + "/api/pull", json=pull, headers=user), 403, "user key POST /api/pull")
    _expect(httpx.post(url + "/api/%70ull", json=pull, headers=user), 403,
            "user key POST /api/%70ull")  # fmt: skip
    admin = {**gateway, "X-API-Key": admin_key}
    _expect(httpx.post(url + "/api/pull", json=pull, headers=admin, timeout=30), 200,
            "admin key POST /api/pull")  # fmt: skip


PROVIDERS = {
    "sandbox": "OVHcloud AI Deploy (the sandbox provider: no token, no image)",
    "ovh": "OVHcloud AI Deploy (the ovh provider, pointed at the emulated AI API)",
    "runpod": "a RunPod load-balancing serverless endpoint (emulated REST v2 and gateway)",
    "runpod-pod": "a RunPod GPU pod (emulated REST v2 and pod proxy)",
}


def _provider_env(provider: str, cloud: dict[str, str]) -> dict[str, str]:
    """What points the CLI at the sandbox's emulation of ``provider``."""
    if provider == "sandbox":
        return {"ONDEMAND_SANDBOX_URL": cloud["ONDEMAND_SANDBOX_URL"]}
    # A registry would hold the real image; the emulators run this package's server.
    image = {"ONDEMAND_IMAGE": "registry.example.com/demo/ollama-ondemand:1.0"}
    names: tuple[str, ...] = (
        ("OVH_AI_API_URL", "OVH_AI_TOKEN")
        if provider == "ovh"
        else (
            "RUNPOD_API_KEY",
            "RUNPOD_API_URL",
            "RUNPOD_ENDPOINT_BASE_URL",
            "RUNPOD_POD_PROXY_URL",
        )
    )
    return {**image, **{name: cloud[name] for name in names}}


def run(provider: str) -> None:
    _say(f"ollama-ondemand demo: the CI lifecycle on {PROVIDERS[provider]},")
    _say("rehearsed against the sandbox cloud on this machine (no GPU, no credentials)")
    with tempfile.TemporaryDirectory(prefix="ondemand-demo-") as tmp:
        admin_key = json.loads(_ondemand(dict(os.environ), "--json", "keys", "new", "--admin"))
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ONDEMAND_", "OLLAMA_", "OVH_", "OPENAI_", "RUNPOD_"))
        }
        emulated = {
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "40",
            "OLLAMA_EMULATOR_PULL_SECONDS": "1.5",
            "OLLAMA_EMULATOR_LOAD_TIME": "0.4",
        }
        with background_sandbox(Path(tmp) / "sandbox", {**clean, **emulated}) as cloud:
            env = {
                **clean,
                **_provider_env(provider, cloud),
                "ONDEMAND_PROVIDER": provider,
                "ONDEMAND_NAME": "ondemand-demo",
                "ONDEMAND_MODELS": MODELS,
                "ONDEMAND_ADMIN_KEY": str(admin_key["key"]),
                "ONDEMAND_TIMEOUT": "2m",
                # RunPod's default is 60 s; the demo shows a worker stopping once idle.
                "ONDEMAND_RUNPOD_IDLE_TIMEOUT": "2",
            }
            _say(f"      sandbox: {cloud['ONDEMAND_SANDBOX_URL']}")
            gateway = (
                {"Authorization": f"Bearer {cloud['RUNPOD_API_KEY']}"}
                if provider == "runpod"
                else {}
            )
            _lifecycle(env, str(admin_key["key"]), gateway)
    _say()
    _say("Done. Next: 'make test'; docs/ovh.md and docs/runpod.md for the real clouds,")
    _say("docs/sandbox.md for rehearsing faults.")


def _lifecycle(env: dict[str, str], admin_key: str, gateway: dict[str, str]) -> None:
    _say()
    _say("[1/7] ondemand deploy   (creates it, and leaves nothing running)")
    _say("      " + _ondemand(env, "deploy").strip())
    _say(f"[2/7] ondemand up       (models: {MODELS}; qwen3:0.6b is not cached: it is pulled)")
    up = json.loads(_ondemand(env, "--json", "up"))
    url, key = str(up["url"]), str(up["api_key"])
    try:
        _say(f"      OLLAMA_HOST={url}  OLLAMA_API_KEY={_masked(key)}")
        _say("[3/7] An authenticated, streamed chat through the deployment's URL")
        _stream_chat(url, key, gateway)
        _say("[4/7] What the proxy refuses")
        _refusals(url, key, admin_key, gateway)
        _say("[5/7] ondemand status")
        for line in _ondemand(env, "status").splitlines():
            _say(f"      {line}")
    finally:
        _say("[6/7] ondemand down")
        # As the action does: the job's down releases exactly the lease its up took.
        lease = {"ONDEMAND_LEASE_ID": str(up.get("lease_id") or "")}
        for line in _ondemand({**env, **lease}, "down").strip().splitlines():
            _say("      " + line.strip())
    if env["ONDEMAND_PROVIDER"] == "runpod":
        _scaled_to_zero(env)
    else:
        stopped = json.loads(_ondemand(env, "--json", "status"))
        if stopped["status"] != "stopped":
            raise DemoFailed(f"after 'ondemand down' it is {stopped['status']}")
        _say(f"      the provider reports it {stopped['status']}: no GPU time bills")
        _after_down(url, gateway)
    _say("[7/7] ondemand delete")
    _say("      " + _ondemand(env, "delete").strip())
    gone = json.loads(_ondemand(env, "--json", "status"))
    if gone["status"] != "absent":
        raise DemoFailed(f"after 'ondemand delete' it is {gone['status']}")
    _say("      status: absent")


def _scaled_to_zero(env: dict[str, str]) -> None:
    """A serverless endpoint is not stopped by a cleanup: its idle worker stops by itself."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Asking a live worker is a request too: wait out its idle timeout between asks.
        time.sleep(float(env["ONDEMAND_RUNPOD_IDLE_TIMEOUT"]) + 1.5)
        report = json.loads(_ondemand(env, "--json", "status"))
        if report.get("detail") == "workers: none":
            _say(f"      {report['detail']}: the worker stopped once idle, and no GPU time bills")
            return
    raise DemoFailed(f"after 'ondemand down' the endpoint still has {report.get('detail')}")


def _after_down(url: str, gateway: dict[str, str]) -> None:
    """What a client of the stopped deployment sees: nothing serves it any more."""
    try:
        answer = httpx.get(url + "/ping", headers=gateway, timeout=5)
    except httpx.HTTPError:
        _say("      /ping no longer answers: the app is stopped")
        return
    # RunPod's gateway and pod proxy stay up and answer for the stopped deployment.
    if answer.status_code in (400, 502):
        _say(f"      /ping -> {answer.status_code} {answer.text.strip()}")
        return
    raise DemoFailed(f"the deployment still answers /ping with {answer.status_code} after down")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ondemand.demo", description=__doc__)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="sandbox")
    args = parser.parse_args()
    try:
        run(args.provider)
    except (DemoFailed, SandboxExited) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
